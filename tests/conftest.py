"""Shared test setup: offline, one thread per model, and helpers to build recipes and run folders."""

import os

# Set before anything imports torch or huggingface_hub: both read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CSV = REPO / "recipes" / "data" / "perturbqa-k562-sample.csv"


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe YAML next to a copy-free reference to the sample CSV and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text.replace("SAMPLE_CSV", str(SAMPLE_CSV)), encoding="utf-8")
        return path

    return write
