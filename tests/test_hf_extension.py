"""`hf curate`: the Hugging Face CLI's own extension dispatch runs curate's `hf-curate` script.

GitHub cannot be reached here, so the test lays out the extension folder exactly as `hf extensions
install OWNER/hf-curate` does (huggingface_hub/cli/extensions.py, 2.5.0): a venv in
`$HOME/.local/share/hf/extensions/hf-curate/venv` holding the package, and `manifest.json` beside it
naming `venv/bin/hf-curate`. The package is the wheel built from this checkout, installed with
--no-deps into a venv that borrows this environment's dependencies through a .pth line (as
tests/test_packaging.py does). Then the real `hf` runs `hf curate ...`, and the assertions are on
curate's own output: a broken manifest fails quietly as "No such command", not with curate's words.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import REPO


def hf(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "hf"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def install_as_hf_extension(home: Path, wheel: Path) -> Path:
    """The folder `hf extensions install` leaves: venv with the package, and manifest.json. Returns the folder."""
    extension = home / ".local" / "share" / "hf" / "extensions" / "hf-curate"
    venv = extension / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    executable = venv / "bin" / "hf-curate"
    assert executable.is_file()
    manifest = {  # the fields ExtensionManifest.save writes; the executable as install records it (resolved)
        "owner": "my-lab", "repo": "hf-curate", "repo_id": "my-lab/hf-curate", "short_name": "curate",
        "executable_path": str(executable.resolve()), "type": "python", "installed_at": datetime.now(timezone.utc).isoformat(),
        "description": "Turn a YAML recipe into an uncertainty-filtered reasoning dataset on the Hugging Face Hub", "commit_sha": None,
    }
    (extension / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return extension


@pytest.mark.slow  # builds the wheel
def test_hf_runs_curate_as_its_extension(tmp_path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)], check=True, capture_output=True)
    (wheel,) = dist.glob("curate-*.whl")
    home = tmp_path / "home"
    extension = install_as_hf_extension(home, wheel)

    work = tmp_path / "elsewhere"
    (work / "recipes" / "data").mkdir(parents=True)
    (work / "recipes" / "quickstart.yaml").write_text((REPO / "recipes" / "quickstart.yaml").read_text())
    (work / "recipes" / "data" / "perturbqa-k562-sample.csv").write_text((REPO / "recipes" / "data" / "perturbqa-k562-sample.csv").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN", "HF_HOME", "XDG_DATA_HOME")}
    env |= {"HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}

    helped = hf("curate", "--help", env=env, cwd=work)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: hf curate [-h]") and "Turn a YAML recipe into an uncertainty-filtered reasoning dataset." in helped.stdout
    assert all(command in helped.stdout for command in ("run", "validate", "verify", "push", "train"))

    validated = hf("curate", "validate", "recipes/quickstart.yaml", env=env, cwd=work)
    assert validated.returncode == 0, validated.stderr
    assert "recipes/quickstart.yaml: ok" in validated.stdout, validated.stdout
    broken = hf("curate", "validate", "recipes/missing.yaml", env=env, cwd=work)  # curate's own error line, through hf
    assert broken.returncode == 2 and "recipes/missing.yaml:1:1: file not found" in broken.stderr, broken.stderr

    listed = hf("extensions", "list", env=env, cwd=work)
    assert listed.returncode == 0, listed.stderr
    assert "hf curate" in listed.stdout and "my-lab/hf-curate" in listed.stdout, listed.stdout

    # without a manifest hf does not know the extension: the failure the assertions above rule out
    (extension / "manifest.json").unlink()
    missing = hf("curate", "--help", env=env, cwd=work)
    assert missing.returncode != 0 and "No such command" in missing.stdout + missing.stderr
    assert "usage: hf curate" not in missing.stdout
