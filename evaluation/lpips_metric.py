"""LPIPS from a local folder, through the ``lpips`` package, with no download.

The ``lpips`` package ships its learned linear heads (``lpips/weights/v0.1/<net>.pth``) but fetches
the ImageNet backbone through torchvision at run time (``download.pytorch.org``). So we build
``lpips.LPIPS(pnet_rand=True)`` — the package's own network, nothing fetched — and load both parts
from the folder given with ``--lpips``:

* the backbone: torchvision's state dict for the net, as ``<name>.safetensors`` or torchvision's own
  cache file ``<name>-<hash>.pth`` (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``,
  ``squeezenet1_1-b8a52dc0.pth``: copy it from ``~/.cache/torch/hub/checkpoints`` of a machine that
  has run torchvision with weights). Keys are torchvision's (``features.0.weight`` ...);
* the linear heads in the package's layout, ``weights/v0.1/<net>.pth`` (or ``<net>.pth`` at the top);
  when absent, the heads the installed ``lpips`` package ships are used.

``.pth`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..engines.errors import UserError

#: torchvision model name per LPIPS net (the backbone file's stem)
BACKBONE_FILES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
_HEAD_KEY = re.compile(r"^lin\d+\.model\.1\.weight$")


class LPIPSLoadError(UserError, RuntimeError):
    """The LPIPS folder is missing a file or holds weights of another net."""


def lpips_head_keys(state: dict) -> list[str]:
    """The linear-head parameter names of an ``lpips.LPIPS`` state dict (``lin0.model.1.weight`` ...)."""
    return [key for key in state if _HEAD_KEY.match(key)]


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _backbone_file(folder: Path, net: str) -> Path:
    stem = BACKBONE_FILES[net]
    candidates = [folder / f"{stem}.safetensors", *sorted(folder.glob(f"{stem}-*.pth")), folder / f"{stem}.pth"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise LPIPSLoadError(
        f"--lpips {folder}: no {net} backbone found; put torchvision's {stem} state dict there as "
        f"{stem}.safetensors or {stem}-<hash>.pth (torchvision's cache name, from ~/.cache/torch/hub/checkpoints)"
    )


def _head_file(folder: Path, net: str) -> Optional[Path]:
    for candidate in (folder / "weights" / "v0.1" / f"{net}.pth", folder / f"{net}.pth"):
        if candidate.is_file():
            return candidate
    return None


class LPIPSMetric:
    """``lpips.LPIPS`` with weights from a local folder; call it on two ``[B,H,W,3]`` 0..1 batches."""

    def __init__(self, folder: str | Path, net: str = "alex", device: str | torch.device = "cpu"):
        if net not in BACKBONE_FILES:
            raise LPIPSLoadError(f"--lpips-net must be one of {', '.join(BACKBONE_FILES)}, got {net!r}")
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise LPIPSLoadError(f"--lpips folder not found: {folder}")
        try:
            import warnings

            import lpips
        except ImportError as exc:
            raise LPIPSLoadError("LPIPS needs the lpips package: pip install lpips (or pip install 'comfyui-emofeedback2[eval]')") from exc
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        state = model.state_dict()
        backbone_path = _backbone_file(folder, net)
        backbone = _read(backbone_path)
        wanted: dict[str, torch.Tensor] = {}
        for key in state:
            if key.startswith("net.slice"):
                source = f"features.{key.split('.', 2)[2]}"
                if source not in backbone:
                    raise LPIPSLoadError(f"{backbone_path.name} lacks {source}: it is not a torchvision {BACKBONE_FILES[net]} state dict")
                wanted[key] = backbone[source]
        head_path = _head_file(folder, net)
        if head_path is None:
            head_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
        heads = _read(head_path)
        missing = [key for key in lpips_head_keys(state) if key not in heads]
        if missing:
            raise LPIPSLoadError(f"{head_path} lacks the LPIPS heads {missing[:3]}; is it the {net} file of lpips v0.1?")
        wanted.update({key: heads[key] for key in lpips_head_keys(state)})
        try:
            model.load_state_dict(wanted, strict=False)
        except RuntimeError as exc:
            raise LPIPSLoadError(f"LPIPS weights in {folder} do not fit lpips net={net!r}: {exc}") from exc
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.net = net
        self.files = {"backbone": str(backbone_path), "heads": str(head_path)}

    @torch.no_grad()
    def distance(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """LPIPS per pair of images (``[B,H,W,3]`` in 0..1) → ``[B]``."""
        a = first.permute(0, 3, 1, 2).float().to(self.device)
        b = second.permute(0, 3, 1, 2).float().to(self.device)
        return self.model(a, b, normalize=True).flatten().cpu()  # normalize: 0..1 → the [-1, 1] LPIPS expects

    def pairs(self, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_size: int = 16) -> list[float]:
        """LPIPS of each ``(image, image)`` pair (``[H,W,3]`` tensors), batched."""
        pairs = list(pairs)
        values: list[float] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            values.extend(self.distance(torch.stack([p[0] for p in chunk]), torch.stack([p[1] for p in chunk])).tolist())
        return values
