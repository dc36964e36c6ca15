"""The emotion adapter: a small learned module that moves prompt conditioning toward a V-A target.

Idea (after EmotiCrafter's "emotion injection", much smaller): encode the target (valence, arousal)
with Fourier features and an MLP, let every prompt token (and the pooled vector, where the model has
one) read that code through a bottleneck MLP, and add the result to the conditioning as a residual:

    context' = context + strength · out_ctx(SiLU(in_ctx(context) + e(V, A)))
    pooled'  = pooled  + strength · out_pool(SiLU(in_pool(pooled) + e(V, A)))

The output layers start at zero, so a fresh adapter is an exact identity, and ``strength == 0``
returns the inputs themselves (bit-exact, no arithmetic). The change is linear in ``strength``, so it
grows monotonically with it. Dimensions come from the conditioning the adapter is made for:
SD1.5 context 768 (no pooled input), SDXL context 2048 + pooled 1280, SD3.x joint context 4096 +
pooled 2048, Flux.1 T5 sequence 4096 + CLIP-L pooled 768; the language-model encoders have no pooled
vector: Flux.2 Klein 7680 (4B) / 12288 (9B), Qwen-Image 3584, Z-Image 2560. Files are safetensors with metadata naming the architecture, dimensions, V-A range and
format version; loading a file made for another architecture fails and names both.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ..emotion_space import VA, VA_MAX, VA_MIN
from ..errors import UserError
from .pipeline_families import ARCH_NAMES

FORMAT_NAME = "emofeedback2.emotion_adapter"
FORMAT_VERSION = 1

# Conditioning sizes of the real base models (context width, pooled width or None): the width of the
# token sequence the denoiser reads and of the pooled vector, where the family has one.
ARCH_DIMS: dict[str, tuple[int, Optional[int]]] = {
    "sd15": (768, None),  # CLIP-L
    "sdxl": (2048, 1280),  # CLIP-L ‖ CLIP-G, CLIP-G pooled
    "sd3": (4096, 2048),  # T5-XXL (CLIP pair padded to it), CLIP-L ‖ CLIP-G pooled
    "flux": (4096, 768),  # T5-XXL sequence, CLIP-L pooled
    "flux2_klein": (7680, None),  # Klein 4B: Qwen3-4B hidden states 9/18/27 stacked (3 × 2560)
    "qwen_image": (3584, None),  # Qwen2.5-VL-7B last hidden state
    "z_image": (2560, None),  # Qwen3-4B second-to-last hidden state
}
# Further released sizes of a family (recognised in error messages; adapters take their widths from the model).
OTHER_DIMS: tuple[tuple[str, int, Optional[int]], ...] = (("flux2_klein", 12288, None),)  # Klein 9B: 3 × 4096


class AdapterFileError(UserError, ValueError):
    """An emotion adapter file is missing, corrupt or not an adapter at all."""


class AdapterNotFoundError(UserError, FileNotFoundError):
    """The emotion adapter file does not exist."""


class AdapterArchitectureError(UserError, ValueError):
    """An adapter meets conditioning (or a file) made for another base-model architecture."""


def _describe(arch: str, context_dim: int, pooled_dim: Optional[int]) -> str:
    pooled = f", pooled {pooled_dim}" if pooled_dim else ""
    return f"{ARCH_NAMES.get(arch, arch)} (context {context_dim}{pooled})"


def arch_from_dims(context_dim: int, pooled_dim: Optional[int]) -> Optional[str]:
    """Name the real architecture with these conditioning widths, or ``None`` if none matches."""
    known = [(arch, ctx, pooled) for arch, (ctx, pooled) in ARCH_DIMS.items()] + list(OTHER_DIMS)
    for arch, ctx, pooled in known:
        if ctx == context_dim and (pooled is None or pooled == pooled_dim):
            return arch
    return None


@dataclass
class EmotionAdapterConfig:
    """Shape of an adapter. ``pooled_dim=None``: the pooled vector (if any) passes through unchanged.

    ``hidden_dim``: width of the bottleneck every token goes through; ``fourier_features``: number of
    sine/cosine frequencies per V-A axis. Defaults give ~1.1M parameters for SD1.5, ~3.7M for SDXL,
    ~6.6M for SD3.x, ~5.3M for Flux.1, ~8.2M for Flux.2 Klein 4B, ~4.0M for Qwen-Image and ~2.9M for
    Z-Image (``EmotionAdapter(EmotionAdapterConfig.for_arch(arch)).num_parameters()``).
    """

    arch: str
    context_dim: int
    pooled_dim: Optional[int] = None
    hidden_dim: int = 512
    fourier_features: int = 8

    def __post_init__(self) -> None:
        if self.arch not in ARCH_DIMS:
            raise ValueError(f"arch must be one of {', '.join(ARCH_DIMS)}, got {self.arch!r}")
        for name in ("context_dim", "hidden_dim", "fourier_features"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.pooled_dim is not None and int(self.pooled_dim) < 1:
            raise ValueError(f"pooled_dim must be a positive integer or None, got {self.pooled_dim!r}")

    @classmethod
    def for_arch(cls, arch: str, **overrides: Any) -> "EmotionAdapterConfig":
        """The config for a real base model's conditioning sizes (see :data:`ARCH_DIMS`)."""
        if arch not in ARCH_DIMS:
            raise ValueError(f"arch must be one of {', '.join(ARCH_DIMS)}, got {arch!r}")
        context_dim, pooled_dim = ARCH_DIMS[arch]
        return cls(arch=arch, context_dim=context_dim, pooled_dim=pooled_dim, **overrides)

    @classmethod
    def from_conditioning(
        cls, arch: str, context: torch.Tensor, pooled: Optional[torch.Tensor] = None, **overrides: Any
    ) -> "EmotionAdapterConfig":
        """Take the widths from tensors the adapter will receive (e.g. a pipeline's ``encode_prompt``)."""
        pooled_dim = None if pooled is None or arch == "sd15" else int(pooled.shape[-1])
        return cls(arch=arch, context_dim=int(context.shape[-1]), pooled_dim=pooled_dim, **overrides)

    def describe(self) -> str:
        return _describe(self.arch, self.context_dim, self.pooled_dim)


class _VAEncoder(nn.Module):
    """(V, A) in [-3, 3]² → a ``hidden_dim`` code via Fourier features and a two-layer MLP."""

    def __init__(self, fourier_features: int, hidden_dim: int):
        super().__init__()
        self.register_buffer(
            "frequencies", (2.0 ** torch.arange(fourier_features, dtype=torch.float32)) * (math.pi / 2), persistent=False
        )
        in_dim = 2 + 2 * 2 * fourier_features
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))

    def forward(self, va: torch.Tensor) -> torch.Tensor:
        x = va / VA_MAX  # [-1, 1]
        angles = x.unsqueeze(-1) * self.frequencies.to(x.dtype)  # [B, 2, F]
        feats = torch.cat([x, angles.sin().flatten(1), angles.cos().flatten(1)], dim=-1)
        return self.mlp(feats)


class _ResidualBranch(nn.Module):
    """Token-wise bottleneck MLP reading the V-A code; its output layer starts at zero."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden_dim)
        self.up = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.up(torch.nn.functional.silu(self.down(self.norm(x)) + code))


def _va_tensor(va: Union[torch.Tensor, VA, Sequence[VA], Sequence[Sequence[float]]], batch: int, device, dtype) -> torch.Tensor:
    """Accept a ``[B,2]``/``[2]`` tensor, a :class:`VA` or a list of them; broadcast one point to ``batch``."""
    if isinstance(va, VA):
        va = [va]
    if not isinstance(va, torch.Tensor):
        va = torch.tensor([p.as_tuple() if isinstance(p, VA) else tuple(p) for p in va], dtype=torch.float32)
    va = va.to(device=device, dtype=dtype)
    if va.ndim == 1:
        va = va.unsqueeze(0)
    if va.ndim != 2 or va.shape[-1] != 2:
        raise ValueError(f"va must have shape [B, 2] (valence, arousal), got {tuple(va.shape)}")
    if not torch.isfinite(va).all() or va.min() < VA_MIN or va.max() > VA_MAX:
        raise ValueError(f"va values must be finite and in [{VA_MIN:g}, {VA_MAX:g}]; got {va.tolist()}")
    if va.shape[0] == 1 and batch != 1:
        va = va.expand(batch, 2)
    elif va.shape[0] != batch:
        raise ValueError(f"got {va.shape[0]} V-A rows for a conditioning batch of {batch}: give one or one per row")
    return va


class EmotionAdapter(nn.Module):
    """Residual change of prompt conditioning driven by a (valence, arousal) target."""

    def __init__(self, config: EmotionAdapterConfig):
        super().__init__()
        self.config = config
        self.va_encoder = _VAEncoder(config.fourier_features, config.hidden_dim)
        self.context_branch = _ResidualBranch(config.context_dim, config.hidden_dim)
        self.pooled_branch = _ResidualBranch(config.pooled_dim, config.hidden_dim) if config.pooled_dim else None

    @property
    def arch(self) -> str:
        return self.config.arch

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_conditioning(self, context: torch.Tensor, pooled: Optional[torch.Tensor] = None) -> None:
        """Raise :class:`AdapterArchitectureError` if these tensors are not what the adapter was made for."""
        if context.ndim != 3:
            raise ValueError(f"context must have shape [B, T, D], got {tuple(context.shape)}")
        got_pooled = int(pooled.shape[-1]) if pooled is not None else None
        want_pooled = self.config.pooled_dim
        if context.shape[-1] != self.config.context_dim or (want_pooled is not None and got_pooled != want_pooled):
            seen = arch_from_dims(int(context.shape[-1]), got_pooled) or "an unknown model"
            raise AdapterArchitectureError(
                f"this emotion adapter was made for {self.config.describe()}, but the conditioning it received "
                f"is {_describe(seen, int(context.shape[-1]), got_pooled)}. Use an adapter trained for this base "
                "model, or set the adapter strength to 0 / leave the adapter unconnected."
            )

    def forward(
        self,
        context: torch.Tensor,
        pooled: Optional[torch.Tensor],
        va: Union[torch.Tensor, VA, Sequence[VA]],
        strength: float = 1.0,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(context', pooled')``; ``strength == 0`` returns the very same input tensors."""
        strength = float(strength)
        if not math.isfinite(strength):
            raise ValueError(f"adapter strength must be finite, got {strength}")
        self.check_conditioning(context, pooled)
        if strength == 0.0:
            return context, pooled
        param = next(self.parameters())
        va_t = _va_tensor(va, context.shape[0], param.device, param.dtype)
        code = self.va_encoder(va_t)
        delta = self.context_branch(context.to(param.device, param.dtype), code.unsqueeze(1))
        new_context = context + (strength * delta).to(device=context.device, dtype=context.dtype)
        new_pooled = pooled
        if pooled is not None and self.pooled_branch is not None:
            if pooled.shape[0] != context.shape[0]:
                raise ValueError(f"pooled batch {pooled.shape[0]} differs from context batch {context.shape[0]}")
            delta_p = self.pooled_branch(pooled.to(param.device, param.dtype), code)
            new_pooled = pooled + (strength * delta_p).to(device=pooled.device, dtype=pooled.dtype)
        return new_context, new_pooled


# --- files -----------------------------------------------------------------------------------------


def adapter_metadata(adapter: EmotionAdapter, extra: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """The safetensors header metadata (all strings) describing ``adapter``."""
    cfg = adapter.config
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "architecture": cfg.arch,
        "context_dim": str(cfg.context_dim),
        "pooled_dim": "" if cfg.pooled_dim is None else str(cfg.pooled_dim),
        "hidden_dim": str(cfg.hidden_dim),
        "fourier_features": str(cfg.fourier_features),
        "va_range": json.dumps([VA_MIN, VA_MAX]),
        "config": json.dumps(asdict(cfg)),
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"metadata key {key!r} is reserved for the adapter format; choose another name")
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return meta


def save_emotion_adapter(adapter: EmotionAdapter, path: Union[str, Path], metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write ``adapter`` as a safetensors file (float32 CPU copies) with descriptive metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise AdapterFileError(f"emotion adapter files are .safetensors; got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.state_dict().items()}
    save_file(tensors, str(path), metadata=adapter_metadata(adapter, metadata))
    return path


def read_adapter_metadata(path: Union[str, Path]) -> dict[str, str]:
    """Read a file's metadata; raise a clear error if it is not an emotion adapter file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AdapterNotFoundError(f"emotion adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise AdapterFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(
            f"{path.name} is not an EmoFeedback2 emotion adapter (metadata format={meta.get('format')!r}); "
            "is it a LoRA? Load LoRAs through the LoRA input instead."
        )
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise AdapterFileError(
            f"{path.name} uses adapter format version {version}, newer than this code's {FORMAT_VERSION}; "
            "update ComfyUI-EmoFeedback2"
        )
    return meta


def is_emotion_adapter_file(path: Union[str, Path]) -> bool:
    try:
        read_adapter_metadata(path)
        return True
    except (OSError, ValueError):
        return False


def load_emotion_adapter(
    path: Union[str, Path],
    expected_arch: Optional[str] = None,
    context_dim: Optional[int] = None,
    pooled_dim: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> EmotionAdapter:
    """Load an adapter file; with ``expected_arch``/dims given, refuse a file made for another model."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_adapter_metadata(path)
    try:
        config = EmotionAdapterConfig(**json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFileError(f"{path.name} has unreadable adapter metadata ({exc}); re-export the adapter") from exc
    if expected_arch is not None and config.arch != expected_arch:
        raise AdapterArchitectureError(
            f"{path.name} is an emotion adapter for {config.describe()}, but the model here is "
            f"{ARCH_NAMES.get(expected_arch, expected_arch)}. Pick the adapter trained for this base model."
        )
    if (context_dim is not None and context_dim != config.context_dim) or (
        pooled_dim is not None and config.pooled_dim is not None and pooled_dim != config.pooled_dim
    ):
        raise AdapterArchitectureError(
            f"{path.name} is an emotion adapter for {config.describe()}, but the model here has "
            f"context {context_dim}" + (f", pooled {pooled_dim}" if pooled_dim else "") + ". "
            "Pick the adapter trained for this base model."
        )
    adapter = EmotionAdapter(config)
    try:
        state = load_file(str(path))
        missing, unexpected = adapter.load_state_dict(state, strict=False)
    except Exception as exc:  # corrupt data or tensors of the wrong shape
        raise AdapterFileError(f"{path.name} cannot be loaded as the adapter its metadata describes ({exc})") from exc
    if missing or unexpected:
        raise AdapterFileError(f"{path.name} does not match its own metadata: missing {missing}, unexpected {unexpected}")
    return adapter.to(device=device, dtype=dtype).eval()
