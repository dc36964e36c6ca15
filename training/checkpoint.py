"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``step-000123/`` holding the trainable weights (LoRA + emotion adapter,
safetensors), ``training_state.pt`` (optimizer, grad scaler, EMA, RNG states; plain tensors and
numbers, loaded with ``weights_only=True``) and ``state.json`` (step, config), plus ``manifest.json`` with
the sha256 of each file (verified on resume and export). It is written into a temporary folder and
moved into place with ``os.replace``; only then is the ``latest`` pointer file (also temp + fsync +
replace) switched to it, and only after that are older checkpoints pruned. A crash at any moment
leaves ``latest`` naming a complete checkpoint (or nothing). A disk that fills inside a save removes
what that save wrote and ends in one line (:class:`.disk_space.DiskFullError`: which device, which
file, how much was needed and free); ``latest`` still names the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..engines.errors import UserError
from .disk_space import DISK_FULL_ERRNOS, DiskFullError, disk_full_message

LATEST = "latest"
WEIGHTS = "trainable.safetensors"
STATE = "training_state.pt"
META = "state.json"
MANIFEST = "manifest.json"
FILES = (WEIGHTS, STATE, META)
NAME = re.compile(r"^step-(\d{6,})$")
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or does not match the model being resumed."""


class NonFiniteError(CheckpointError):
    """Weights (or the loss) became NaN/inf; nothing with them is written."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_of(name: str) -> Optional[int]:
    """The step number of a checkpoint folder name ``step-000123``, else None."""
    match = NAME.match(name)
    return int(match.group(1)) if match else None


def check_finite(weights: dict[str, torch.Tensor], what: str = "weights") -> None:
    """Refuse NaN/inf tensors: a checkpoint or export with them would poison every later use."""
    for key, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteError(f"{what} tensor {key!r} holds NaN or inf; refusing to write it "
                                 "(the run diverged: lower optim.lr and resume from the last checkpoint)")


def save_checkpoint(
    root: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` and point ``latest`` at it.

    Order: write everything into a temporary folder (files, then ``manifest.json`` with their sha256,
    fsynced) → rename it to ``step-N`` → switch ``latest`` (temp file + fsync + rename) → only then
    prune older checkpoints and leftovers. A crash at any point leaves ``latest`` naming a complete,
    verifiable checkpoint: the previous one until the switch, the new one after it.
    """
    from safetensors.torch import save as save_weights

    check_finite(weights)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root)
    name = f"step-{step:06d}"
    final = root / name
    current = _pointer_target(root)
    if final.exists() and current == name:
        raise CheckpointError(f"{final} is the checkpoint 'latest' names; refusing to overwrite it in place")
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    writing = tmp
    try:
        tmp.mkdir()
        # Written through Python file objects: a full disk then raises OSError(ENOSPC), where
        # safetensors' and torch's own file writers raise errors that do not say so.
        writing = tmp / WEIGHTS
        data = save_weights({k: v.detach().cpu().contiguous() for k, v in weights.items()})
        with open(writing, "wb") as handle:
            handle.write(data)
        del data
        writing = tmp / STATE
        with open(writing, "wb") as handle:
            torch.save(state, handle)
        writing = tmp / META
        writing.write_text(json.dumps({**meta, "step": step}, indent=2, default=str), encoding="utf-8")
        manifest = {"step": step, "sha256": {f: sha256_file(tmp / f) for f in FILES}}
        writing = tmp / MANIFEST
        writing.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if final.exists():  # an orphan of a save killed before the pointer switch: 'latest' does not name it
            os.replace(final, root / f"{TRASH_PREFIX}{name}-{os.getpid()}")
        os.replace(tmp, final)
        _fsync_dir(root)
        writing = root / LATEST
        _write_text_atomic(writing, name)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        # Free what this save wrote ('latest' still names the previous checkpoint), then say so in one line.
        shutil.rmtree(tmp, ignore_errors=True)
        if final.is_dir() and _pointer_target(root) != name:
            shutil.rmtree(final, ignore_errors=True)
        for stale in root.glob(f".{LATEST}.tmp-*"):
            stale.unlink(missing_ok=True)
        previous = _pointer_target(root)
        kept = (f"the previous checkpoint {root / previous} is intact: free space, then continue with --resume"
                if previous else "no earlier checkpoint exists: free space and start again")
        raise DiskFullError(disk_full_message(writing, exc, needed=_checkpoint_bytes(weights, state), after=kept)) from exc
    _prune(root, keep, protect=name)
    clean_leftovers(root)
    return final


def _checkpoint_bytes(weights: dict[str, torch.Tensor], state: Any) -> int:
    """About what a checkpoint takes on disk: its tensors' bytes plus a margin for the small files."""

    def tensor_bytes(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(tensor_bytes(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensor_bytes(v) for v in value)
        return 0

    return tensor_bytes(weights) + tensor_bytes(state) + (64 << 10)


def clean_leftovers(root: str | Path) -> None:
    """Remove temp/trash folders and pointer temp files of crashed writers (never what 'latest' names)."""
    root = Path(root)
    if not root.is_dir():
        return
    for stale in list(root.glob(f"{TMP_PREFIX}*")) + list(root.glob(f"{TRASH_PREFIX}*")) + list(root.glob(".old-step-*")):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for stale in root.glob(f".{LATEST}.tmp-*"):
        stale.unlink(missing_ok=True)


def _prune(root: Path, keep: int, protect: str) -> None:
    steps = sorted((step_of(p.name), p) for p in root.iterdir() if p.is_dir() and step_of(p.name) is not None)
    for _, old in steps[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def _pointer_target(root: Path) -> Optional[str]:
    """The folder name ``latest`` holds, checked to be a checkpoint name inside ``root``; None if no pointer."""
    pointer = root / LATEST
    if not pointer.exists() and not pointer.is_symlink():
        return None
    if pointer.is_symlink() or not pointer.is_file():
        raise CheckpointError(f"{pointer} must be a plain file naming a checkpoint folder (step-NNNNNN)")
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{pointer} cannot be read ({exc}); restore it or delete the run folder") from exc
    if step_of(name) is None:
        raise CheckpointError(f"{pointer} names {name[:80]!r}, not a checkpoint folder of this run "
                              f"(step-NNNNNN inside {root}); fix or delete {pointer}")
    return name


def latest_checkpoint(root: str | Path) -> Optional[Path]:
    """The folder ``latest`` points at, or None when there is no pointer; a bad pointer is an error."""
    root = Path(root)
    name = _pointer_target(root)
    if name is None:
        return None
    path = root / name
    if path.is_symlink() or (path.exists() and path.resolve().parent != root.resolve()):
        raise CheckpointError(f"{root / LATEST} names {path}, which is not a folder inside {root}")
    missing = [f for f in FILES + (MANIFEST,) if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{root / LATEST} names {name}, which is incomplete (missing {', '.join(missing)}); "
                              f"restore it, or start a new run in another output_dir")
    return path


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file against the sha256 recorded in ``manifest.json``; returns the manifest."""
    path = Path(path)
    for f in FILES + (MANIFEST,):
        if not (path / f).is_file():
            raise CheckpointError(f"{path} is not a complete checkpoint: {f} is missing")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        recorded = manifest["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / MANIFEST} is unreadable ({exc}); the checkpoint cannot be verified") from exc
    for f in FILES:
        actual = sha256_file(path / f)
        if recorded.get(f) != actual:
            raise CheckpointError(f"{path / f} does not match its recorded sha256 (corrupted or edited); "
                                  "use an earlier checkpoint")
    named = step_of(path.name)
    if named is not None and manifest.get("step") != named:
        raise CheckpointError(f"{path / MANIFEST} records step {manifest.get('step')}, the folder is {path.name}")
    return manifest


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, training state, meta) of a checkpoint folder, after verifying its content hashes."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest = verify_checkpoint(path)
    try:
        weights = load_file(str(path / WEIGHTS))
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except Exception as exc:  # hashes matched, so this is a file we did not write (or a library change)
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("step") != manifest.get("step"):
        raise CheckpointError(f"{path / META} disagrees with {path / MANIFEST} about the step")
    return weights, state, meta
