"""Every shipped recipe validates, offline and with no endpoint configured, and says what it claims."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from curation.recipe.load import load_recipe
from curation.source import check_source, label_leak_problems
from tests.conftest import REPO

RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml"))
ABLATIONS = ["perturbqa-global.yaml", "perturbqa-random.yaml", "perturbqa-perplexity.yaml", "perturbqa-self-consistency.yaml"]


def _env_without_endpoints() -> dict[str, str]:
    # ${TGI_URL} and friends are resolved only when a run starts: validation must not need them
    return {k: v for k, v in os.environ.items() if not k.endswith(("_URL", "_API_KEY", "_TOKEN")) and k != "HF_TOKEN"} | {"HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_curate_validate_accepts_every_recipe(recipe):
    result = subprocess.run(
        [sys.executable, "-m", "curation.cli", "validate", str(recipe)], capture_output=True, text=True, env=_env_without_endpoints(), cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"({load_recipe(str(recipe)).recipe.name})")


def test_recipe_names_are_unique():
    names = [load_recipe(str(p)).recipe.name for p in RECIPES]
    assert len(names) == len(set(names)), names


def test_perturbqa_follows_stoisser_et_al():
    recipe = load_recipe(str(REPO / "recipes" / "perturbqa.yaml")).recipe
    assert recipe.source.format == "perturbqa" and recipe.source.label_column == "label"
    assert recipe.source.sample == "natural" and not recipe.source.label_in_prompt  # label-free end to end
    assert recipe.generator.backend == "tgi" and recipe.generator.url == "${TGI_URL}"
    assert recipe.generator.reference and recipe.generator.samples == 8 and recipe.generator.temperature >= 1.0
    assert recipe.answer.tag == "answer" and recipe.answer.classes == ["upregulated", "downregulated", "not differentially expressed"]
    assert recipe.score.metric == "cocoa_ppl" and recipe.score.similarity == "answer"
    assert (recipe.select.strategy, recipe.select.fraction, recipe.select.completion) == ("per_class", 0.1, "reference")
    assert recipe.hub is not None and recipe.train is not None and recipe.train.qlora


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablations_change_only_scoring_or_selection(name):
    """So the main run's journal serves them: every trace fingerprint is the same."""
    base_loaded = load_recipe(str(REPO / "recipes" / "perturbqa.yaml"))
    loaded = load_recipe(str(REPO / "recipes" / name))
    base, ablation = base_loaded.recipe, loaded.recipe
    for section in ("prompt", "generator", "answer"):
        assert getattr(ablation, section) == getattr(base, section), section
    # the same data: the packaged PerturbQA copy, same cell line, split and sample
    assert ablation.source == base.source and base.source.path is None
    assert (ablation.score, ablation.select) != (base.score, base.select)
    assert ablation.name != base.name and ablation.hub.repo != base.hub.repo
    assert ablation.select.fraction == base.select.fraction  # same budget: the comparison is fair


def test_ablations_are_the_four_of_the_paper():
    recipes = {name: load_recipe(str(REPO / "recipes" / name)).recipe for name in ABLATIONS}
    assert recipes["perturbqa-global.yaml"].select.strategy == "global"
    assert recipes["perturbqa-random.yaml"].select.strategy == "random"
    assert recipes["perturbqa-perplexity.yaml"].score.metric == "perplexity"
    assert recipes["perturbqa-self-consistency.yaml"].score.metric == "self_consistency"


def test_synthpert_rationalises_with_an_explicit_opt_in():
    loaded = load_recipe(str(REPO / "recipes" / "synthpert.yaml"))
    recipe = loaded.recipe
    assert recipe.source.label_in_prompt and "{{ label }}" in recipe.prompt.teacher_hint
    assert "label" not in recipe.prompt.user and "label" not in (recipe.prompt.system or "")  # the student never sees it
    assert label_leak_problems(loaded) == []
    assert "<think>" in recipe.prompt.system and "<answer>" in recipe.prompt.system
    # as the authors run it: word scale, reasoning only, excellent + good, answer must match the label
    critic = recipe.critic
    assert critic is not None and critic.scale == "words" and critic.reasoning_only and critic.min_grade == 4
    assert recipe.select.require_correct and recipe.source.label_column == "label"
    assert recipe.generator.backend == critic.backend == "openai" and recipe.generator.model == critic.model == "o4-mini"
    assert recipe.generator.url == critic.url == "${OPENAI_BASE_URL}" and recipe.generator.api_key == "${OPENAI_API_KEY}"
    assert recipe.source.limit == 20170  # training fraction 0.15 of K562's 134,467 train rows
    assert recipe.score.metric == "critic" and recipe.select.fraction == 1.0
    train = recipe.train
    # the authors' SFT: 4-bit base, LoRA r 32 / alpha 32 / dropout 0 on every projection, lr 1e-4, batch 4, 5 warmup, linear, 50 epochs
    assert (train.qlora, train.lora_r, train.lora_alpha, train.lora_dropout, train.learning_rate) == (True, 32, 32, 0.0, 1e-4)
    assert (train.per_device_train_batch_size, train.warmup_steps, train.lr_scheduler_type, train.num_train_epochs, train.max_length) == (4, 5, "linear", 50, 2048)
    assert set(train.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # o4-mini's API: no logprobs, max_completion_tokens, default temperature, one 2048-token generation per question, seed 88
    for section in (recipe.generator, critic):
        assert (section.logprobs, section.max_tokens_param, section.send_sampling) == (False, "max_completion_tokens", False)
    assert (recipe.generator.samples, recipe.generator.reference, recipe.generator.max_new_tokens, recipe.source.shuffle_seed) == (1, False, 2048, 88)
    assert "I do not know" in recipe.prompt.teacher_hint and "11." in recipe.prompt.teacher_hint
    assert recipe.scorer is None and recipe.cost is not None

    # without the opt-in the same recipe is refused, pointing at the hint
    opted_out = loaded.recipe.model_copy(update={"source": recipe.source.model_copy(update={"label_in_prompt": False})})
    problems = label_leak_problems(type(loaded)(opted_out, loaded.file, loaded.marks, loaded.raw, loaded.base_dir))
    assert [p.path for p in problems] == ["prompt.teacher_hint"]


def test_prompts_name_the_experiment():
    """A biologist reads: the perturbation (CRISPRi knockdown of pert), the target gene, the cell line, the direction question."""
    for name in ["perturbqa.yaml", "synthpert.yaml", "quickstart.yaml"]:
        prompt = load_recipe(str(REPO / "recipes" / name)).recipe.prompt
        text = (prompt.system or "") + prompt.user
        for needle in ["CRISPRi", "{{ pert }}", "{{ gene }}", "{{ cell_line }}", "upregulated", "downregulated", "not differentially expressed"]:
            assert needle in text, (name, needle)


def test_headline_recipe_validates_anywhere(tmp_path):
    """The PerturbQA data ships with curate: a copy of the headline recipe far from the repo still validates."""
    copy = tmp_path / "perturbqa.yaml"
    copy.write_text((REPO / "recipes" / "perturbqa.yaml").read_text())
    result = subprocess.run([sys.executable, "-m", "curation.cli", "validate", str(copy)], capture_output=True, text=True, env=_env_without_endpoints())
    assert result.returncode == 0, result.stderr


def test_missing_perturbqa_folder_is_a_clear_validation_error(tmp_path):
    """A recipe that names its own PerturbQA copy which is not there: one line, at source.path, with the way out."""
    copy = tmp_path / "perturbqa.yaml"
    copy.write_text((REPO / "recipes" / "perturbqa.yaml").read_text().replace("  format: perturbqa", "  path: nowhere/perturbqa\n  format: perturbqa", 1))
    result = subprocess.run([sys.executable, "-m", "curation.cli", "validate", str(copy)], capture_output=True, text=True, env=_env_without_endpoints())
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert line.startswith(f"{copy}:") and "source.path: cannot read PerturbQA source: PerturbQA folder not found" in line
    assert "leave out source.path" in line


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_no_recipe_points_outside_the_repository(recipe):
    """Every file a recipe names (source, extends) resolves inside the checkout, so a fresh clone runs it."""
    data = yaml.safe_load(recipe.read_text())
    for named in [data.get("extends"), (data.get("source") or {}).get("path")]:
        if isinstance(named, str) and not named.startswith("hf://"):
            target = (recipe.parent / named).resolve()
            assert target.is_relative_to(REPO.resolve()), (recipe, named)
            assert target.exists(), (recipe, named)


def test_check_source_reads_the_packaged_data_quickly():
    import time

    loaded = load_recipe(str(REPO / "recipes" / "perturbqa.yaml"))
    start = time.monotonic()
    assert check_source(loaded) == []
    assert time.monotonic() - start < 30  # the 157k-row join is vectorised (well under a second unloaded)
