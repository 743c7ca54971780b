"""The dataset card's metadata as the Hub reads it: through huggingface_hub's own DatasetCard / DatasetCardData."""

from __future__ import annotations

from huggingface_hub import DatasetCard, DatasetCardData

from curation import dataset_card, run_folder
from tests.builders.hub_run import make_run

REPO = "test-org/synth"


def test_card_names_machine_annotations_and_the_method_papers(tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    card = DatasetCard(dataset_card.publication(run_dir, REPO).card)
    data = card.data
    assert data.annotations_creators == ["machine-generated"]
    assert {"arxiv:2510.05871", "arxiv:2509.25346"} <= set(data.tags)
    assert "arxiv:2210.01408" not in data.tags  # the run did not select with conformal p-values
    # the round trip the Hub's own client makes: to a dict and back, nothing lost or renamed
    again = DatasetCardData(**data.to_dict())
    assert again.to_dict() == data.to_dict() and again.annotations_creators == ["machine-generated"]
    # the papers are also links in the text, which the Hub turns into paper pages
    assert "https://arxiv.org/abs/2510.05871" in card.text and "https://arxiv.org/abs/2509.25346" in card.text
    # the renamed select.completion is what the card reads (jinja would render a stale name as nothing)
    assert "completion: the `reference` trace" in card.text
    # the folder's own card says the same
    local = DatasetCard((run_dir / run_folder.CARD_FILE).read_text(encoding="utf-8"))
    assert local.data.annotations_creators == ["machine-generated"]


def test_a_conformal_selection_cites_its_paper() -> None:
    from tests.builders.synthetic_run import RECIPE

    # model_copy does not validate: the strategy (issue 30's) need not exist in this checkout for the card's rule to be checked
    conformal = RECIPE.model_copy(update={"select": RECIPE.select.model_copy(update={"strategy": "conformal"})})
    assert dataset_card.method_papers(RECIPE) == ["2510.05871", "2509.25346"]
    assert dataset_card.method_papers(conformal) == ["2510.05871", "2509.25346", "2210.01408"]
