"""The diffusers generation backend: SD1.5 … Z-Image pipelines behind the Generator protocol.

Reads top to bottom: load the pipeline (local folder or hub id), optionally a LoRA (diffusers/PEFT
or kohya keys, whatever ``load_lora_weights`` understands — refusing files whose keys do not map)
and an emotion adapter; then per request: weave the text route into the prompts, encode them with
the pipeline's own ``encode_prompt`` (per family: :mod:`.pipeline_families`), let the adapter move the positive embeddings toward each
image's V-A target, and run the pipeline on those embeddings with one ``torch.Generator`` per image
(so every image of a group differs and a seed reproduces its image, wherever it sits in a batch).

The training engineer reuses ``.pipe``, :func:`detect_arch` and :meth:`DiffusersGenerator.encode`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..descriptors import emotional_prompt
from .emotion_adapter import EmotionAdapter, load_emotion_adapter
from .pipeline_families import (  # noqa: F401  (detect_arch, conditioning_dims, EncodedPrompts: imported from here too)
    EncodedPrompts,
    call_kwargs,
    conditioning_dims,
    detect_arch,
    encode_prompts,
    uses_negative,
)
from .. import devices
from ..emotion_space import VA
from .protocol import GenerationRequest
from ..progress import ProgressCallback
from ..errors import UserError

LORA_ADAPTER_NAME = "emofeedback2"


class ModelLoadError(UserError, RuntimeError):
    """The base model or one of the weights files could not be loaded; the message says what to fix."""


@dataclass
class DiffusersGeneratorConfig:
    """How to build a :class:`DiffusersGenerator`.

    model: a local diffusers folder (with ``model_index.json``) or a hub id such as
        ``stabilityai/stable-diffusion-3.5-medium`` (needs network or a filled HF cache).
    dtype: ``float32`` | ``float16`` | ``bfloat16``; ``auto`` = float16 on CUDA, float32 elsewhere.
    device: ``cpu`` | ``cuda`` | ``cuda:1`` | ``auto`` (CUDA when available).
    lora: a LoRA ``.safetensors`` file or a folder holding ``pytorch_lora_weights.safetensors``.
    adapter: an emotion adapter ``.safetensors`` file or an :class:`EmotionAdapter` already in memory.
    text_strength: strength of the text route (emotion words woven into prompts) when targets are given.
    drop_t5: SD3.x only: load without the T5 encoder (``text_encoder_3``), saving ~10 GB.
    max_sequence_length: text tokens of the T5 / language-model encoders (SD3.x, Flux, Qwen-Image, …).
    max_batch_size: images per pipeline call; larger requests run in chunks.
    """

    model: str
    dtype: str = "auto"
    device: str = "auto"
    lora: Optional[str] = None
    lora_scale: float = 1.0
    adapter: Union[str, EmotionAdapter, None] = None
    text_strength: float = 0.0
    drop_t5: bool = False
    max_sequence_length: int = 256
    max_batch_size: int = 8
    show_progress_bar: bool = False
    local_files_only: Optional[bool] = None
    extra_from_pretrained: dict = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    return devices.resolve_device(device, error=ModelLoadError)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    # float16 on a GPU: what SD checkpoints ship in (diffusers upcasts the VAEs that need it).
    return devices.resolve_dtype(dtype, device, auto_cuda=torch.float16, error=ModelLoadError)


def _looks_like_path(model: str) -> bool:
    return (
        os.path.isabs(model)
        or model.startswith((".", "~"))
        or "\\" in model
        or model.count("/") > 1
        or model.endswith((".safetensors", ".ckpt"))
    )


def _pipeline_class(model: str, local: bool):
    import diffusers

    if local:
        index = Path(model) / "model_index.json"
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        cls = getattr(diffusers, name, None)
        if cls is not None:
            return cls
    return diffusers.DiffusionPipeline


def load_pipeline(config: DiffusersGeneratorConfig, device: torch.device, dtype: torch.dtype):
    """``from_pretrained`` on a local folder or a hub id, with errors that name the folder or id."""
    model = str(config.model)
    path = Path(model).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or _looks_like_path(model)):
        if path.is_file():
            raise ModelLoadError(
                f"{path} is a single file; the diffusers backend needs a diffusers folder (with model_index.json). "
                "Convert it with diffusers' from_single_file(...).save_pretrained(folder), or use the ComfyUI nodes."
            )
        raise ModelLoadError(f"model folder not found: {path}; give a diffusers folder (with model_index.json) or a hub id")
    if local and not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path} has no model_index.json: it is not a diffusers pipeline folder")
    kwargs: dict[str, Any] = {"dtype": dtype, **config.extra_from_pretrained}
    if config.local_files_only is not None:
        kwargs["local_files_only"] = config.local_files_only
    cls = _pipeline_class(str(path) if local else model, local)
    if local:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        if index.get("text_encoder_3", [None])[0] is None and "text_encoder_3" in index:
            kwargs.update(text_encoder_3=None, tokenizer_3=None)  # saved without T5
    if config.drop_t5:
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    try:
        pipe = cls.from_pretrained(str(path) if local else model, **kwargs)
    except (OSError, ValueError) as exc:
        where = f"local folder {path}" if local else f"hub id {model!r} (no local folder of that name exists)"
        raise ModelLoadError(f"could not load a diffusers pipeline from {where}: {exc}") from exc
    pipe.set_progress_bar_config(disable=not config.show_progress_bar)
    return pipe.to(device)


# --- LoRA -------------------------------------------------------------------------------------------


def _lora_modules_in_file(state: dict[str, torch.Tensor]) -> set[str]:
    """Module paths a LoRA file targets (kohya ``lora_down``, PEFT ``lora_A``, old ``lora.down``)."""
    markers = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight", ".lora_A.default.weight")
    return {k[: -len(m)] for k in state for m in markers if k.endswith(m)}


def _lora_modules_injected(pipe: Any, adapter_name: str) -> int:
    count = 0
    for component in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for sub in module.modules():
            lora_a = getattr(sub, "lora_A", None)
            if lora_a is not None and adapter_name in lora_a:
                count += 1
    return count


def _diffusers_copy_of_export(path: Path) -> Path:
    """Our export's ComfyUI-keyed file → the diffusers copy written beside it (diffusers reads ComfyUI's
    Flux/Qwen-Image/Z-Image key names only partly); any other file as it is."""
    from safetensors import safe_open

    copy = path.parent / "diffusers_lora" / "pytorch_lora_weights.safetensors"
    if not copy.is_file():
        return path
    try:
        with safe_open(str(path), framework="pt") as handle:
            ours = "emofeedback2_arch" in (handle.metadata() or {})
    except Exception:  # unreadable: the caller reports it
        return path
    return copy if ours else path


def apply_lora(pipe: Any, lora: str, scale: float = 1.0, adapter_name: str = LORA_ADAPTER_NAME) -> int:
    """Load a LoRA into the pipeline through diffusers; refuse files whose layers do not all map.

    Returns the number of layers that received LoRA weights. A LoRA made for another base model
    raises :class:`ModelLoadError` instead of loading partially.
    """
    from safetensors.torch import load_file

    path = Path(lora).expanduser()
    if path.is_dir():
        path = path / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"LoRA file not found: {path} (give a .safetensors file or a folder holding "
                             "pytorch_lora_weights.safetensors)")
    if path.suffix != ".safetensors":
        raise ModelLoadError(f"LoRA {path.name}: only .safetensors files are loaded (pickle files can run code)")
    path = _diffusers_copy_of_export(path)
    try:
        wanted = _lora_modules_in_file(load_file(str(path)))
    except Exception as exc:  # safetensors raises its own error type for a corrupt or truncated file
        raise ModelLoadError(f"LoRA {path} is not a readable safetensors file ({exc}); re-export or re-download it") from exc
    if not wanted:
        raise ModelLoadError(f"{path.name} holds no LoRA weights (no lora_down/lora_A keys); is it an emotion adapter?")
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"LoRA {path.name} does not fit this {detect_arch(pipe)} pipeline: {exc}") from exc
    injected = _lora_modules_injected(pipe, adapter_name)
    if injected < len(wanted):
        if injected:
            pipe.delete_adapters(adapter_name)
        raise ModelLoadError(
            f"LoRA {path.name} targets {len(wanted)} layers but only {injected} exist in this "
            f"{detect_arch(pipe)} pipeline: it was made for another base model. Refusing a partial load; "
            "use the LoRA trained for this model."
        )
    pipe.set_adapters([adapter_name], adapter_weights=[float(scale)])
    return injected


# --- the generator ----------------------------------------------------------------------------------


class DiffusersGenerator:
    """Generator protocol implementation over a diffusers pipeline of any supported family."""

    name = "diffusers"

    def __init__(self, pipe: Any, adapter: Optional[EmotionAdapter] = None, text_strength: float = 0.0,
                 max_sequence_length: int = 256, max_batch_size: int = 8):
        self.pipe = pipe
        self.arch = detect_arch(pipe)
        self.context_dim, self.pooled_dim = conditioning_dims(pipe)
        if adapter is not None:
            if adapter.arch != self.arch:
                from .emotion_adapter import AdapterArchitectureError

                raise AdapterArchitectureError(
                    f"the emotion adapter was made for {adapter.config.describe()} but the pipeline is {self.arch}"
                )
            adapter = adapter.to(device=self.device).eval()
        self.adapter = adapter
        if not 0.0 <= text_strength <= 2.0:
            raise ValueError(f"text_strength must be in [0, 2], got {text_strength}")
        self.text_strength = float(text_strength)
        self.max_sequence_length = int(max_sequence_length)
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_batch_size = int(max_batch_size)

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    def prompts_for(self, request: GenerationRequest) -> list[str]:
        """The prompts actually encoded: the text route applied when targets are given."""
        if request.targets is None or self.text_strength == 0.0:
            return list(request.prompts)
        return [emotional_prompt(p, t, self.text_strength) for p, t in zip(request.prompts, request.targets)]

    def encode(self, prompts: Sequence[str], negative_prompt: str = "", guidance: bool = True) -> EncodedPrompts:
        """The pipeline's own ``encode_prompt`` for ``prompts`` (one row each) and, with ``guidance``, the negative."""
        max_len = None if self.arch in ("sd15", "sdxl") else self.max_sequence_length  # CLIP-only: always 77
        return encode_prompts(self.pipe, self.arch, prompts, negative_prompt, negative=guidance,
                              max_sequence_length=max_len, device=self.device)

    def apply_adapter(self, encoded: EncodedPrompts, targets: Optional[Sequence[VA]], strength: float) -> EncodedPrompts:
        """Move the positive embeddings toward each row's target (negative ones stay put)."""
        if self.adapter is None or targets is None or float(strength) == 0.0:
            return encoded
        with torch.no_grad():
            pe, pooled = self.adapter(encoded.prompt_embeds, encoded.pooled_prompt_embeds, list(targets), strength)
        return EncodedPrompts(pe, encoded.negative_prompt_embeds, pooled, encoded.negative_pooled_prompt_embeds,
                              encoded.prompt_mask, encoded.negative_prompt_mask)

    def generate(self, request: GenerationRequest, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Float32 ``[B, H, W, 3]`` images in 0..1 on CPU, image ``i`` from ``request.seeds[i]``."""
        prompts = self.prompts_for(request)
        chunks = [range(i, min(i + self.max_batch_size, len(prompts))) for i in range(0, len(prompts), self.max_batch_size)]
        total = request.steps * len(chunks)
        images = []
        for index, rows in enumerate(chunks):
            targets = None if request.targets is None else [request.targets[i] for i in rows]
            negative = uses_negative(self.pipe, self.arch, request.cfg)
            encoded = self.encode([prompts[i] for i in rows], request.negative_prompt, guidance=negative)
            encoded = self.apply_adapter(encoded, targets, request.adapter_strength)
            # CPU generators: the same seed gives the same starting noise on every device.
            generators = [torch.Generator("cpu").manual_seed(int(request.seeds[i])) for i in rows]

            def on_step_end(pipe, step, timestep, callback_kwargs, _done=index * request.steps):
                if progress is not None:
                    progress(_done + step + 1, total)
                return callback_kwargs

            kwargs = dict(
                height=request.height, width=request.width, num_inference_steps=request.steps,
                generator=generators, output_type="pt", callback_on_step_end=on_step_end,
                **call_kwargs(self.pipe, self.arch, encoded, request.cfg), **request.extra,
            )
            if self.arch == "sd3":
                kwargs["max_sequence_length"] = self.max_sequence_length
            with torch.no_grad():
                out = self.pipe(**kwargs).images
            images.append(out.float().clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu())
        return torch.cat(images, dim=0).contiguous()


def load_diffusers_generator(config: DiffusersGeneratorConfig) -> DiffusersGenerator:
    """Load the pipeline, the LoRA and the emotion adapter named by ``config``."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    pipe = load_pipeline(config, device, dtype)
    if config.lora:
        apply_lora(pipe, config.lora, config.lora_scale)
    adapter = config.adapter
    if adapter is not None and not isinstance(adapter, EmotionAdapter):
        context_dim, pooled_dim = conditioning_dims(pipe)
        adapter = load_emotion_adapter(adapter, expected_arch=detect_arch(pipe), context_dim=context_dim,
                                       pooled_dim=pooled_dim, device=device)
    return DiffusersGenerator(pipe, adapter=adapter, text_strength=config.text_strength,
                              max_sequence_length=config.max_sequence_length, max_batch_size=config.max_batch_size)
