"""Model checkpoints on disk: the cache folder, and a GGUF dequantized once into an ordinary checkpoint.

transformers dequantizes a GGUF tensor by tensor on every load (30-55 s for the embedded Q4_1
SmolLM2 on 2 busy cores). Every loader of a GGUF (generation, the scorer, the critic, `curate train`,
the tests) goes through ``gguf_checkpoint`` instead: the first load converts the file and saves the
float weights, the tokenizer and the generation config under ``<cache>/models``, in a folder named by
the GGUF's sha256 (and the transformers version that converted it); later loads read that folder,
which takes seconds and draws no conversion bar. A folder that is missing, half written or
unreadable is converted again, and the message says why.

torch and transformers are imported inside the functions, so that importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

MANIFEST = "curate_checkpoint.json"  # written last: a folder without it was never finished
_digests: dict[tuple[str, int, int], str] = {}


def cache_dir() -> Path:
    """Where converted checkpoints live: $CURATE_CACHE, else $XDG_CACHE_HOME/curate, else ~/.cache/curate."""
    if os.environ.get("CURATE_CACHE"):
        return Path(os.environ["CURATE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "curate"


def file_digest(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in a process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def local_gguf(location: str, gguf: str, revision: str | None = None) -> Path:
    """The GGUF file itself: in a local folder, or fetched into the Hub cache for a repo id."""
    folder = Path(location).expanduser()
    if folder.exists():
        path = folder / gguf
        if not path.exists():
            raise FileNotFoundError(f"no {gguf} in {location}")
        return path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(location, gguf, revision=revision))


def checkpoint_folder(gguf_path: Path) -> Path:
    import transformers

    return cache_dir() / "models" / f"{gguf_path.stem}-{file_digest(gguf_path)[:16]}-transformers{transformers.__version__}"


def checkpoint_problem(target: Path) -> str | None:
    """Why a cached checkpoint cannot be used (None: it is complete, as its manifest lists it)."""
    if not target.exists():
        return "missing"
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        sizes = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "incomplete (no manifest)"
    for name, size in sizes.items():
        try:
            if (target / name).stat().st_size != size:
                return f"corrupt ({name} has the wrong size)"
        except OSError:
            return f"corrupt ({name} is missing)"
    return None


def gguf_checkpoint(location: str, gguf: str, revision: str | None = None, *, name: str | None = None) -> Path:
    """The dequantized checkpoint of a GGUF, converted into the cache when it is not there or not whole."""
    gguf_path = local_gguf(location, gguf, revision)
    target = checkpoint_folder(gguf_path)
    problem = checkpoint_problem(target)
    if problem is not None:
        convert_gguf(gguf_path, target, f"{name or gguf_path.name}: the cached dequantized checkpoint is {problem}")
    return target


def convert_gguf(gguf_path: Path, target: Path, why: str) -> None:
    """Dequantize a GGUF to float32 and save it as a plain checkpoint (written aside, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"{why}; converting it into {target} (once, about a minute)...", file=sys.stderr, flush=True)
    folder, gguf = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, quantization_config=GgufConfig(dequantize=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    files = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
    manifest = {"gguf": str(gguf_path), "sha256": file_digest(gguf_path), "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    stale = target.parent / f".{target.name}.{os.getpid()}.old"
    if target.exists():  # the broken copy goes aside first; a rename over a folder is refused
        os.rename(target, stale)
    try:
        os.rename(staging, target)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(stale, ignore_errors=True)
