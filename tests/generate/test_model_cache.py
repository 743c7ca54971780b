"""The dequantized-GGUF cache every loader shares (curation.models): keyed by the file's digest, rebuilt when not whole."""

import json
import os
import subprocess
import sys

import pytest

from curation import models
from tests.conftest import REPO, SAMPLE_CSV


def test_the_folder_is_named_by_the_files_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path, content in ((a, b"one"), (b, b"two")):
        path.parent.mkdir()
        path.write_bytes(content)
    assert models.checkpoint_folder(a) != models.checkpoint_folder(b)  # same name, different bytes
    assert models.checkpoint_folder(a).parent == tmp_path / "cache" / "models"
    b.write_bytes(b"one")
    assert models.checkpoint_folder(a) == models.checkpoint_folder(b)  # same bytes elsewhere: the same checkpoint


def test_a_checkpoint_is_usable_only_when_its_manifest_matches_its_files(tmp_path):
    folder = tmp_path / "ckpt"
    assert models.checkpoint_problem(folder) == "missing"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    assert models.checkpoint_problem(folder) == "incomplete (no manifest)"  # a conversion killed before it finished
    (folder / models.MANIFEST).write_text(json.dumps({"files": {"model.safetensors": 10}}))
    assert models.checkpoint_problem(folder) is None
    (folder / "model.safetensors").write_bytes(b"x" * 4)
    assert models.checkpoint_problem(folder) == "corrupt (model.safetensors has the wrong size)"
    (folder / "model.safetensors").unlink()
    assert models.checkpoint_problem(folder) == "corrupt (model.safetensors is missing)"


TINY = """\
name: cache-test
source:
  path: {csv}
  limit: 1
  label_column: label
prompt:
  user: "After CRISPRi knockdown of {{{{ pert }}}} in {{{{ cell_line }}}} cells, the expression of {{{{ gene }}}} is"
generator:
  backend: local
  model: embedded
  samples: 1
  max_new_tokens: 4
  seed: 0
answer:
  labels: [upregulated, downregulated]
select:
  fraction: 0.5
"""


def _run(tmp_path, name):
    env = {**os.environ, "CURATE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TQDM_DISABLE", None)
    done = subprocess.run([sys.executable, "-m", "curation.cli", "run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / name), "--no-push"],
                          env=env, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
def test_the_embedded_model_is_converted_once_and_again_when_corrupt(tmp_path):
    (tmp_path / "r.yaml").write_text(TINY.format(csv=SAMPLE_CSV))
    first = _run(tmp_path, "one")
    assert "cached dequantized checkpoint is missing; converting it" in first
    assert "\r" not in first  # no library bar in a log: the conversion's bare tqdm, "Loading weights", "Writing model shards"
    (folder,) = (tmp_path / "cache" / "models").iterdir()
    assert json.loads((folder / models.MANIFEST).read_text())["sha256"] == models.file_digest(_embedded_gguf())
    assert "converting" not in _run(tmp_path, "two")  # warm: read from the cache
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:  # a disk that filled up, a copy cut short
        handle.truncate(weights.stat().st_size // 2)
    third = _run(tmp_path, "three")
    assert "checkpoint is corrupt (model.safetensors has the wrong size); converting it" in third
    assert models.checkpoint_problem(folder) is None


def _embedded_gguf():
    from pathlib import Path

    from curation.backends.local import embedded_model_location

    location, gguf = embedded_model_location()
    return Path(location) / gguf
