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
    if images.shape[1] < 2 or images.shape[2] < 2:
        raise ImageBatchError(f"{name} is {images.shape[1]}×{images.shape[2]} pixels; need at least 2×2")
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
    return [image.convert("RGB") for image in images]


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
