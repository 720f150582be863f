"""Run-directory artifacts with provenance, written atomically.

Every artifact a chapter writes (head sets, traces, tables, adapters, figures) carries a provenance record:
model identity, dataset and example IDs, parameters, package version, git commit and time. Chapters exchange
artifacts only through files in the run directory, never through notebook globals.

Formats: JSON (records, head sets), CSV (tidy tables), safetensors (tensors, deltas, adapters). No pickle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROVENANCE_KEY = "provenance"


class ProvenanceError(ValueError):
    """An artifact was made with another model or tokenizer than the one asking for it."""


def package_version() -> str:
    """Installed version of the support package (falls back to pyproject's when not installed)."""
    try:
        from importlib.metadata import version

        return version("reasoning-heads")
    except Exception:  # pragma: no cover - only when run from a bare checkout
        return "0+unknown"


def git_commit() -> str:
    """Short git commit of the project checkout, with '-dirty' when the tree has changes; 'unknown' otherwise."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def file_hash(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of the given files, in sorted order (identifies a toy checkpoint)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def provenance(
    model: Mapping[str, Any] | None,
    dataset: str | None = None,
    example_ids: Iterable[Any] | None = None,
    params: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict:
    """Build a provenance record. `model` is `LoadedModel.identity()` (name, revision or hash, tokenizer hash)."""
    rec = {
        "model": _jsonable(dict(model or {})),
        "dataset": dataset,
        "example_ids": _jsonable(list(example_ids)) if example_ids is not None else None,
        "params": _jsonable(dict(params or {})),
        "package_version": package_version(),
        "git_commit": git_commit(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rec.update(_jsonable(extra))
    return rec


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: Path | str, payload: Mapping[str, Any], prov: Mapping[str, Any]) -> Path:
    """Atomically write `payload` plus its provenance record as JSON."""
    body = dict(_jsonable(payload))
    body[PROVENANCE_KEY] = dict(prov)
    return atomic_write_bytes(path, json.dumps(body, indent=2, sort_keys=False).encode())


def read_json(path: Path | str, expect_model: Mapping[str, Any] | None = None) -> dict:
    """Read a JSON artifact; if `expect_model` is given, refuse one made with another model or tokenizer."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist; run the chapter that writes it first")
    body = json.loads(path.read_text())
    if expect_model is not None:
        check_model(body.get(PROVENANCE_KEY, {}), expect_model, path)
    return body


def check_model(prov: Mapping[str, Any], expect_model: Mapping[str, Any], what: Any = "artifact") -> None:
    """Raise ProvenanceError unless the artifact's model and tokenizer identity match `expect_model`."""
    got = dict(prov.get("model") or {})
    for key in ("name", "weights", "tokenizer"):
        if key in expect_model and got.get(key) != expect_model.get(key):
            raise ProvenanceError(
                f"{what} was made with model {got.get('name')!r} ({key}={got.get(key)!r}), but this chapter "
                f"uses {expect_model.get('name')!r} ({key}={expect_model.get(key)!r}). Use a fresh run directory "
                "or re-run the chapter that writes it with this model."
            )


def write_table(path: Path | str, df: "Any", prov: Mapping[str, Any]) -> Path:
    """Atomically write a tidy pandas frame as CSV, with its provenance in a sidecar `<name>.provenance.json`."""
    path = Path(path)
    atomic_write_bytes(path, df.to_csv(index=False).encode())
    atomic_write_bytes(path.with_suffix(".provenance.json"), json.dumps(dict(prov), indent=2).encode())
    return path


def read_table(path: Path | str, expect_model: Mapping[str, Any] | None = None) -> "Any":
    """Read a CSV table written by `write_table`, checking its provenance when `expect_model` is given."""
    import pandas as pd

    path = Path(path)
    if expect_model is not None:
        check_model(json.loads(path.with_suffix(".provenance.json").read_text()), expect_model, path)
    return pd.read_csv(path)


def write_tensors(path: Path | str, tensors: Mapping[str, Any], prov: Mapping[str, Any]) -> Path:
    """Atomically write tensors as safetensors with the provenance record (JSON) in the file's metadata."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={PROVENANCE_KEY: json.dumps(dict(prov))})
    return atomic_write_bytes(path, data)


def read_tensors(path: Path | str, expect_model: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
    """Read a safetensors artifact; returns (tensors, provenance). Never unpickles anything."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    prov = json.loads(meta.get(PROVENANCE_KEY, "{}"))
    if expect_model is not None:
        check_model(prov, expect_model, path)
    return tensors, prov


def run_dir(path: Path | str | None = None) -> Path:
    """The run directory: the argument, else $RH_RUN_DIR, else ./runs/default. Created if missing."""
    p = Path(path or os.environ.get("RH_RUN_DIR") or Path.cwd() / "runs" / "default")
    p.mkdir(parents=True, exist_ok=True)
    return p
