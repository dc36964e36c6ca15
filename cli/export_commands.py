"""``emofeedback2 export``: a checkpoint → ComfyUI files, never into a checkpoint, never silently
over an earlier export.

``--out`` is checked before the export runs. An export writes into ``--out`` only the names in
:data:`EXPORT_NAMES`: with ``--overwrite`` those are set aside, put back if the export fails and
deleted once it succeeds, so a file of the old export (an emotion adapter the new checkpoint does
not have) never sits beside the new one.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Optional

from ..engines.errors import UserError

# training.export's KOHYA_FILE, DIFFUSERS_DIR and ADAPTER_FILE, restated so --help does not import
# torch; tests/test_cli_outputs.py pins them
EXPORT_NAMES = ("emofeedback2_lora.safetensors", "diffusers_lora", "emotion_adapter.safetensors")
_SET_ASIDE = ".replaced-export-"  # + pid: the previous export while the new one is written


class ExportOutError(UserError):
    """An ``export --out`` folder that must not be written."""


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export",
        help="write a checkpoint's LoRA (kohya keys for ComfyUI + diffusers copy) and emotion adapter",
        description="Export a training checkpoint (its sha256 hashes are verified first) as a kohya-key LoRA "
        "for ComfyUI's LoraLoader, a diffusers LoRA folder and the emotion adapter.",
    )
    export.add_argument("--checkpoint", required=True,
                        help="a checkpoint folder (step-XXXXXX) or a run folder / checkpoints folder with 'latest'")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--no-ema", action="store_true", help="export the live weights even if an EMA was kept")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --out (emofeedback2_lora.safetensors, diffusers_lora/, "
                        "emotion_adapter.safetensors; kept if the new export fails); a folder holding anything "
                        "else is still refused")
    export.set_defaults(func=run)


def _write(args: argparse.Namespace) -> int:
    from ..training.generator.export import export_checkpoint

    paths = export_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _checkpoint_folder(out: Path) -> Optional[Path]:
    """The checkpoint (``step-N``) or checkpoints folder (with ``latest``) that ``out`` is or lies in."""
    from ..training.checkpoint import LATEST, MANIFEST, WEIGHTS, step_of

    for folder in (out, *out.parents):
        if (folder / MANIFEST).is_file() and (folder / WEIGHTS).is_file():
            return folder
        # the trainer prunes and cleans a checkpoints folder: anything written there can vanish
        if (folder / LATEST).is_file() and folder.is_dir() and any(step_of(p.name) is not None for p in folder.iterdir()):
            return folder
    return None


def _is_export(entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry.name.startswith(_SET_ASIDE):  # left by an export killed mid-way: the export before it
        return entry.is_dir()
    if entry.name == "diffusers_lora":  # diffusers' save_lora_weights writes only .safetensors files there
        return entry.is_dir() and all(f.is_file() and not f.is_symlink() and f.suffix == ".safetensors"
                                      for f in entry.iterdir())
    return entry.name in EXPORT_NAMES and entry.is_file()


def _previous_export(out: Path, overwrite: bool) -> list[Path]:
    """What of ``out`` an export may replace; refuses a folder that holds anything else."""
    owner = _checkpoint_folder(out.resolve())
    if owner is not None:
        raise ExportOutError(f"--out {out} is (or lies in) the checkpoint folder {owner}; export into a folder of "
                             "its own, never into checkpoints (the trainer prunes them)")
    if not out.is_dir():
        return []  # new (the export creates it) or a file (the export names that)
    entries = sorted(out.iterdir())
    if not entries:
        return []
    shown = ", ".join(e.name for e in entries[:4]) + (" ..." if len(entries) > 4 else "")
    if not overwrite:
        raise ExportOutError(f"--out {out} is not empty ({shown}); choose a new folder, or pass --overwrite to "
                             "replace the earlier export in it")
    foreign = [e.name for e in entries if not _is_export(e)]
    if foreign:
        raise ExportOutError(f"--out {out} holds files an export does not write ({', '.join(foreign[:4])}); "
                             "--overwrite only replaces an earlier export: choose another folder")
    return entries


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    previous = _previous_export(out, args.overwrite)
    if not previous:
        return _write(args)
    aside = out / f"{_SET_ASIDE}{os.getpid()}"
    aside.mkdir()
    for entry in previous:
        os.replace(entry, aside / entry.name)
    try:
        code = _write(args)
    except BaseException:
        for name in EXPORT_NAMES:  # a half-written new export goes; the old one comes back
            _remove(out / name)
        for entry in aside.iterdir():
            os.replace(entry, out / entry.name)
        aside.rmdir()
        raise
    shutil.rmtree(aside)
    return code
