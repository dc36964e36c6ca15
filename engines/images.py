"""Image batch conversion and validation shared by scorers, generators and nodes.

ComfyUI IMAGE tensors are float32 ``[B, H, W, C]`` in 0..1; engines also accept PIL images. Bad input
raises :class:`ImageBatchError` with a message that says what was expected.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .errors import UserError

ImageBatch = Union[torch.Tensor, Sequence[Image.Image]]


class ImageBatchError(UserError, ValueError):
    """An image batch is empty, wrongly shaped, or holds NaN/inf values."""


# One size rule for every scorer (colour heuristic and LVLM alike): at least MIN_SIDE pixels a side and
# an aspect ratio under MAX_ASPECT (Qwen-VL's resizer refuses 200:1 and beyond).
MIN_SIDE = 2
MAX_ASPECT = 200
# Image files larger than this are refused before decoding (PIL's decompression-bomb limit).
MAX_FILE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def check_size(width: int, height: int, name: str = "image") -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageBatchError(f"{name} is {width}×{height} pixels; need at least {MIN_SIDE}×{MIN_SIDE}")
    if max(width, height) / min(width, height) >= MAX_ASPECT:
        raise ImageBatchError(f"{name} is {width}×{height} pixels: aspect ratio over {MAX_ASPECT}:1; crop it first")


def _scaled_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images scaled (not clipped) to 8-bit."""
    array = np.asarray(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit data (PNG/TIFF); "I" holds the same 0..65535 range when Pillow widens it
        scaled = np.clip(array.astype(np.float64), 0, 65535) / 65535.0
    else:  # "F": 0..1 floats (e.g. EXR/TIFF exports), else 0..255
        values = array.astype(np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        scaled = values if values.max(initial=0.0) <= 1.0 else values / 255.0
        scaled = np.clip(scaled, 0, 1)
    return Image.fromarray((scaled * 255.0).round().astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB, high-bit-depth modes rescaled (``convert("RGB")`` would clip them)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _scaled_to_8bit(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("LAB", "HSV"):
        raise ImageBatchError(f"images in {image.mode} colour space are not supported; save them as RGB")
    return image.convert("RGB")


def load_image_file(path, name: str = "") -> Image.Image:
    """Open an image file as 8-bit RGB: size checked before decoding, every mode scaled correctly."""
    from PIL import UnidentifiedImageError

    label = name or str(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_FILE_PIXELS:
                raise ImageBatchError(f"{label} is {width}×{height} = {width * height} pixels, over the limit of "
                                      f"{MAX_FILE_PIXELS} pixels; downscale it first")
            check_size(width, height, label)
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise ImageBatchError(f"{label} is larger than the limit of {MAX_FILE_PIXELS} pixels; downscale it first") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if isinstance(exc, ImageBatchError):
            raise
        raise ImageBatchError(f"{label} is not a readable image: {exc}") from exc


def check_image_tensor(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Validate a ComfyUI-style IMAGE tensor ``[B, H, W, C]`` (C = 1, 3 or 4) and return it."""
    if not isinstance(images, torch.Tensor):
        raise ImageBatchError(f"{name} must be a torch tensor [B,H,W,C], got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ImageBatchError(
            f"{name} must have shape [batch, height, width, channels] with 1, 3 or 4 channels "
            f"(ComfyUI IMAGE), got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ImageBatchError(f"{name} is an empty batch: connect at least one image")
    check_size(int(images.shape[2]), int(images.shape[1]), name)
    if not torch.isfinite(images).all():
        raise ImageBatchError(f"{name} contains NaN or infinite values; check the node that produced it")
    return images


def to_pil_list(images: ImageBatch, name: str = "images") -> list[Image.Image]:
    """Convert a tensor batch or a sequence of PIL images to a list of RGB PIL images."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, torch.Tensor):
        images = check_image_tensor(images, name)
        arrays = (images.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        out = []
        for array in arrays:
            if array.shape[-1] == 1:
                array = np.repeat(array, 3, axis=-1)
            out.append(Image.fromarray(array[..., :3], mode="RGB"))
        return out
    images = list(images)
    if not images:
        raise ImageBatchError(f"{name} is an empty batch: pass at least one image")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ImageBatchError(f"{name}[{i}] must be a PIL image or the batch a tensor, got {type(image).__name__}")
        check_size(image.width, image.height, f"{name}[{i}]")
    return [to_rgb(image) for image in images]


def to_tensor_batch(images: ImageBatch, name: str = "images") -> torch.Tensor:
    """Convert PIL images (same size) or a tensor to a float32 ``[B, H, W, 3]`` tensor in 0..1 on CPU."""
    if isinstance(images, torch.Tensor):
        images = check_image_tensor(images, name).detach().float().cpu()
        if images.shape[-1] == 1:
            images = images.expand(-1, -1, -1, 3)
        return images[..., :3].clamp(0, 1).contiguous()
    pil = to_pil_list(images, name)
    sizes = {image.size for image in pil}
    if len(sizes) != 1:
        raise ImageBatchError(f"{name} have different sizes {sorted(sizes)}; resize them to one size first")
    return torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in pil]))
