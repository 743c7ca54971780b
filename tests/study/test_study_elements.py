"""The study's second task (recipes/data/elements-categories.csv, recipes/study/elements*.yaml) and the
cross-task summary (scripts/study_summary.py), with no model."""

import csv
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from curation.recipe.load import load_recipe
from curation.source import load_questions

REPO = Path(__file__).resolve().parents[2]
TASK = REPO / "recipes" / "data" / "elements-categories.csv"
STUDY = REPO / "recipes" / "study"
FAMILIES = {"Transition metals", "Actinides", "Lanthanides", "Poor metals", "Metalloids", "Nonmetals", "Noble gases", "Halogens", "Alkali metals", "Alkaline earth metals"}


@pytest.fixture(scope="module")
def rows():
    with TASK.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_families_are_the_periodic_tables_and_imbalanced(rows):
    names = {r["name"]: r["category"] for r in rows}
    assert names["Iron"] == "Transition metals" and names["Sodium"] == "Alkali metals" and names["Fluorine"] == "Halogens"
    assert names["Helium"] == "Noble gases" and names["Uranium"] == "Actinides" and names["Neodymium"] == "Lanthanides"
    assert names["Silicon"] == "Metalloids" and names["Calcium"] == "Alkaline earth metals" and names["Carbon"] == "Nonmetals"
    assert len(names) == 118 and len(rows) == 236 and {r["category"] for r in rows} == FAMILIES
    counts = Counter(r["category"] for r in rows if r["question_type"] == "name")
    assert counts["Transition metals"] == 40 and counts["Halogens"] == 6  # imbalanced, as the plan says
    assert {r["subject"] for r in rows if r["name"] == "Iron"} == {"Iron", "the element with the symbol Fe"}


def test_split_is_by_element_stratified_and_deterministic(rows):
    by_element: dict = {}
    for r in rows:
        by_element.setdefault(r["atomic_number"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in by_element.values())  # an element's two questions on one side
    for family in FAMILIES:
        members = sorted({r["atomic_number"] for r in rows if r["category"] == family}, key=lambda z: hashlib.sha256(z.encode()).hexdigest())
        held = [z for z in members if by_element[z] == {"test"}]
        assert held == members[: round(0.4 * len(members))], family
    assert Counter(r["split"] for r in rows) == {"pool": 142, "test": 94}


def test_the_recipe_curates_only_the_pool_and_eval_reads_only_test(rows):
    from curation.eval.model import held_out_questions

    loaded = load_recipe(str(STUDY / "elements.yaml"))
    pool = load_questions(loaded).questions
    assert {q.id for q in pool} == {r["question_id"] for r in rows if r["split"] == "pool"}
    assert all(q.label in FAMILIES for q in pool)
    assert pool[0].messages[-1]["content"].startswith("Which group of elements does ")
    test, info = held_out_questions(loaded, split="test", limit=None)
    assert {q.id for q in test} == {r["question_id"] for r in rows if r["split"] == "test"} and not {q.id for q in test} & {q.id for q in pool}
    assert info["excluded_training_rows"] == 0


@pytest.mark.parametrize("name", ["elements-global", "elements-random", "elements-perplexity", "elements-self-consistency", "elements-embedding"])
def test_ablations_share_the_main_journal_and_m49s_design(name):
    from curation.generate import plan_requests

    class Identity:
        def model_identity(self):
            return "SmolLM2-135M-Instruct.Q4_1.gguf"

        def fingerprint_params(self, config):
            return {"backend": "openai", "temperature": config.temperature}

    def fingerprints(loaded):
        return [r.fingerprint for r in plan_requests(load_questions(loaded).questions, loaded.recipe.generator, Identity())]

    main = load_recipe(str(STUDY / "elements.yaml"))
    ablation = load_recipe(str(STUDY / f"{name}.yaml"))
    assert fingerprints(ablation) == fingerprints(main)
    assert (ablation.recipe.score, ablation.recipe.select) != (main.recipe.score, main.recipe.select)
    m49 = load_recipe(str(STUDY / "m49.yaml")).recipe
    # the second task changes the question, not the method: same teacher settings, selection and LoRA
    assert main.recipe.generator.model_dump(exclude={"seed"}) == m49.generator.model_dump(exclude={"seed"})
    assert main.recipe.select == m49.select and main.recipe.score == m49.score and main.recipe.train == m49.train


def test_parser_reads_what_the_model_wrote_in_the_greedy_check():
    from curation.parse import AnswerParser

    parse = AnswerParser(load_recipe(str(STUDY / "elements.yaml")).recipe.answer)
    assert parse("Rhodium is a transition metal element with the chemical symbol Rh") == "Transition metals"
    assert parse("Praseodymium is a rare earth metal, belonging to the group") == "Lanthanides"
    assert parse("Iodine is a nonmetal element") == "Nonmetals"
    assert parse("Nobelium is a chemical element that is a member of the noble gas group") == "Noble gases"
    assert parse("Seaborgium is a chemical element that has yet to be discovered") is None
    assert parse("Cesium is a member of the alkali metals, which are a group of elements") == "Alkali metals"
    check = json.loads((REPO / "results" / "elements_greedy_check.json").read_text())
    assert (check["question"]["right"], check["question"]["readable"], check["question_symbol"]["right"], check["question_symbol"]["readable"]) == (15, 29, 6, 32)


def test_summary_tables_from_study_reports(tmp_path, load_script):
    study_summary = load_script("study_summary")

    def model(mean, rows=None, labels=False):
        return {"mean": mean, "per_seed": [mean], "question_ci": [mean - 0.05, mean + 0.05], "trained_rows": rows, "uses_labels": labels}

    metric = {"auroc": 0.7, "auroc_ci": [0.6, 0.8], "prr": 0.4, "prr_ci": [0.2, 0.6], "selection": {"0.25": {"per_class": {"accuracy": 0.9, "accuracy_ci": [0.8, 1.0]}}}}
    report = {"similarity": "answer", "pool": {"n": 50}, "metrics": {"cocoa_ppl": metric, "msp": {**metric, "auroc": 0.5, "auroc_ci": [0.4, 0.6]}}}
    embedding = {"similarity": "embedding", "pool": {"n": 50}, "metrics": {"cocoa_ppl": {**metric, "auroc": 0.75}, "msp": metric}}
    study = {
        "created": "2026-12-06", "main_run": "x", "reports": {"x": report, "x-embedding": embedding},
        "adapters": {"questions": 20, "seeds": 1, "models": {"base": model(0.4), "filtered": model(0.6, 10), "label-correct": model(0.7, 10, True)},
                     "comparisons": [{"a": "filtered", "b": "label-correct", "delta_accuracy": -0.1, "ci": [-0.2, 0.0], "verdict": "not distinguishable"}]},
    }
    (tmp_path / "m49_study.json").write_text(json.dumps(study))
    study_summary.write(tmp_path)
    text = (tmp_path / "study_summary.md").read_text()
    assert "| SFT on right answers, same counts (**uses labels**) | 0.700 [0.650, 0.750] (10 rows) |" in text
    assert "| filtered − label-correct | -0.100 [-0.200, +0.000]: not distinguishable |" in text
    assert "| UN M49 regions (50) | `cocoa_ppl` | embedding | 0.750 [0.600, 0.800]" in text  # the similarity ablation's CoCoA row
    assert "`msp` | – | 0.500" in text and text.count("`msp`") == 1  # similarity-free metrics once, from the main run
    assert (tmp_path / "study_answer.png").stat().st_size > 1000
