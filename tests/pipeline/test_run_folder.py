"""RunFolder: the run folder's layout, declared once, read back by score, eval, train, push and view."""

from __future__ import annotations

import pytest

from curation import tables
from curation.recipe.dump import resolved_recipe_yaml
from curation.run_folder import RunFolder
from curation.types import RecipeError
from tests.builders.synthetic_run import RECIPE, comparable_rows, read_split_table


def test_a_sharded_run_reads_back_whole_through_the_run_folder(monkeypatch, journal_run):
    monkeypatch.setattr(tables, "MAX_SHARD_BYTES", 4000)
    run_dir = journal_run("run", 30, chunk_questions=5)
    folder = RunFolder(run_dir)
    assert len(folder.split_files("scored")) > 1 and folder.has_split("traces")
    assert comparable_rows(folder.read_split("scored")) == comparable_rows(read_split_table(run_dir, "data", "scored"))
    assert folder.read_split("traces", columns=["id"]).num_rows == 30 * 5 - 3
    assert folder.dataset("scored").count_rows() == 30
    assert folder.stats()["stages"]["select"]["rows_in"] == 30
    assert folder.journal.exists() and folder.card_file.exists()


def test_the_recipe_comes_back_with_overrides_and_a_missing_one_is_a_clear_error(tmp_path):
    folder = RunFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no recipe.yaml"):
        folder.recipe()
    with pytest.raises(FileNotFoundError, match="no scored split"):
        folder.read_split("scored")
    assert folder.dataset("scored") is None and folder.stats() == {}
    folder.recipe_file.write_text(resolved_recipe_yaml(RECIPE), encoding="utf-8")
    recipe = folder.recipe({"select": {"fraction": 0.5}})
    assert recipe.select.fraction == 0.5 and recipe.model_dump(exclude={"select"}) == RECIPE.model_dump(exclude={"select"})
    folder.recipe_file.write_text(resolved_recipe_yaml(RECIPE).replace("samples:", "samples: -1 #"), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"recipe.yaml:1:1: generator.samples: "):
        folder.recipe()
    folder.recipe_file.write_text("- not a mapping\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="must be a mapping"):
        folder.raw_recipe()
