"""The self-improvement study's task (recipes/data/m49-continents.csv) and recipes (recipes/study/)."""

import csv
import hashlib
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from curation.recipe.load import load_recipe
from curation.source import load_questions

REPO = Path(__file__).resolve().parents[2]
TASK = REPO / "recipes" / "data" / "m49-continents.csv"
STUDY = REPO / "recipes" / "study"


@pytest.fixture(scope="module")
def rows():
    with TASK.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_regions_follow_m49_subregions_and_classes_are_imbalanced(rows, load_script):
    builder = load_script("build_m49_task")
    for row in rows:
        assert builder.SUBREGION_TO_REGION[row["subregion"]] == row["region"], row
    spot = {r["country"]: r["region"] for r in rows}
    assert spot["Japan"] == "Asia" and spot["Brazil"] == "Americas" and spot["Kenya"] == "Africa" and spot["Fiji"] == "Oceania" and spot["Norway"] == "Europe"
    counts = Counter(r["region"] for r in rows)
    assert len(rows) >= 400 and set(counts) == {"Africa", "Americas", "Asia", "Europe", "Oceania"}
    assert counts["Oceania"] < counts["Africa"] / 2  # imbalanced: why budgets are per class


def test_split_is_by_country_stratified_and_deterministic(rows):
    splits_of = {}
    for row in rows:
        splits_of.setdefault(row["m49"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())  # a country's two questions never straddle the split
    assert len({r["question_id"] for r in rows}) == len(rows)
    by_region = {}
    for m49, (split,) in splits_of.items():
        region = next(r["region"] for r in rows if r["m49"] == m49)
        by_region.setdefault(region, []).append((hashlib.sha256(str(int(m49)).encode()).hexdigest(), split))
    for region, members in by_region.items():
        members.sort()
        n_test = sum(split == "test" for _, split in members)
        assert abs(n_test - 0.4 * len(members)) <= 1, region
        assert all(split == "test" for _, split in members[:n_test]), region  # the first 40% by hash, as documented


def test_the_study_recipe_curates_only_the_pool_and_eval_reads_only_test(rows):
    from curation.eval.model import held_out_questions

    loaded = load_recipe(str(STUDY / "m49.yaml"))
    pool = load_questions(loaded).questions
    assert {q.id for q in pool} == {r["question_id"] for r in rows if r["split"] == "pool"}
    assert all(q.label in {"Africa", "Americas", "Asia", "Europe", "Oceania"} for q in pool)
    test, info = held_out_questions(loaded, split="test", limit=None)
    assert {q.id for q in test} == {r["question_id"] for r in rows if r["split"] == "test"}
    assert not {q.id for q in test} & {q.id for q in pool}
    assert info["excluded_training_rows"] == 0


@pytest.mark.parametrize("name", ["m49", "m49-global", "m49-random", "m49-perplexity", "m49-self-consistency", "m49-embedding"])
def test_study_recipes_share_the_main_journal(name):
    """Ablations change only scoring or selection, so every trace fingerprint matches the main run's."""
    from curation.generate import plan_requests

    class Identity:  # what the openai backend would fingerprint, without a server
        def model_identity(self):
            return "SmolLM2-135M-Instruct.Q4_1.gguf"

        def fingerprint_params(self, config):
            return {"backend": "openai", "temperature": config.temperature}

    def fingerprints(loaded):
        return [r.fingerprint for r in plan_requests(load_questions(loaded).questions, loaded.recipe.generator, Identity())]

    main_loaded = load_recipe(str(STUDY / "m49.yaml"))
    loaded = load_recipe(str(STUDY / f"{name}.yaml"))
    main, recipe = main_loaded.recipe, loaded.recipe
    assert fingerprints(loaded) == fingerprints(main_loaded)
    assert recipe.generator.model_dump() == main.generator.model_dump() and recipe.prompt.model_dump() == main.prompt.model_dump()
    assert recipe.generator.samples >= 8 and recipe.generator.reference
    if name != "m49":
        assert (recipe.score, recipe.select) != (main.score, main.select)


def test_answer_parser_reads_the_regions_the_model_writes():
    from curation.parse import AnswerParser

    parse = AnswerParser(load_recipe(str(STUDY / "m49.yaml")).recipe.answer)
    assert parse("Brazil is located in the continent of South America") == "Americas"
    assert parse("Fiji is located in the continent of the Pacific Ocean, near Australia") == "Oceania"
    assert parse("Japan is located in the continent of Asia") == "Asia"
    assert parse("Jordan is located in the Middle East") == "Asia"
    assert parse("the continent of Atlantis") is None
