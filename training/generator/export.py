"""Export trained weights: a LoRA stock ComfyUI loads in full, a diffusers-format copy, the emotion adapter.

ComfyUI's LoraLoader (``model_lora_keys_unet`` in comfy/lora.py) maps, per model family, LoRA
module names written from the *diffusers* module paths:

* SD1.5 / SDXL: ``lora_unet_<path, dots → underscores>`` (``unet_to_diffusers`` in comfy/utils.py);
* SD3.x: ``lora_transformer_<…>`` (its SD3 branch, ``mmdit_to_diffusers``);
* Flux.1 and Flux.2: ``lora_transformer_<…>`` (its Flux branch, ``flux_to_diffusers``: q/k/v land in
  slices of the fused qkv / linear1 weights; Flux.2 is ``model_base.Flux2(Flux)`` in newer ComfyUI,
  whose ``flux_to_diffusers`` adds the single blocks' ``attn.to_qkv_mlp_proj`` / ``attn.to_out``);
* Qwen-Image: ``transformer.<path>`` (its QwenImage branch; ComfyUI's module names are diffusers');
* Z-Image: ``transformer.<path>`` (newer ComfyUI's Lumina2 branch, ``z_image_to_diffusers``; v0.3.64
  has no Z-Image).

Every module gets ``.lora_down.weight`` (peft ``lora_A``), ``.lora_up.weight`` (``lora_B``) and
``.alpha``. ComfyUI scales by ``alpha / rank``, peft by ``lora_alpha / r``, so ``.alpha`` must be
``lora_alpha`` (writing the rank would silently change the strength). Text-encoder LoRAs use
``lora_te1_``/``lora_te2_`` on the *transformers 4* CLIP layout; transformers 5 dropped the
``text_model.`` level from CLIPTextModel state-dict keys, so it is re-inserted here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch

from .families import FAMILIES, family_for

#: the ComfyUI LoRA key prefix of each family ("…_" joins the module path with underscores, "…." with dots)
COMFY_PREFIX = {arch: family.comfy_lora_prefix for arch, family in FAMILIES.items()}
KOHYA_FILE = "emofeedback2_lora.safetensors"
DIFFUSERS_DIR = "diffusers_lora"
ADAPTER_FILE = "emotion_adapter.safetensors"

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")


def clean_peft_state(state: dict[str, torch.Tensor], adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and the peft adapter name: ``<module>.lora_A.weight`` / ``.lora_B.weight``."""
    out = {}
    for key, value in state.items():
        k = key
        for prefix in ("denoiser.", "base_model.model.", "unet.", "transformer."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        k = k.replace(f".lora_A.{adapter_name}.weight", ".lora_A.weight").replace(
            f".lora_B.{adapter_name}.weight", ".lora_B.weight"
        )
        if not _PEFT_KEY.match(k):
            raise ValueError(f"{key!r} is not a peft LoRA weight key (<module>.lora_A/B[.adapter].weight)")
        out[k] = value
    return out


def peft_to_kohya(state: dict[str, torch.Tensor], arch: str, lora_alpha: float,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """peft/diffusers LoRA weights of a denoiser → the keys ComfyUI maps for ``arch``, ``.alpha = lora_alpha``."""
    if arch not in COMFY_PREFIX:
        raise ValueError(f"arch must be one of {sorted(COMFY_PREFIX)}, got {arch!r}")
    return _to_kohya(clean_peft_state(state), COMFY_PREFIX[arch], lora_alpha, dtype)


def comfy_module_name(prefix: str, module: str) -> str:
    """``prefix`` + a diffusers module path: underscores for kohya-style prefixes (``lora_unet_``), dots otherwise."""
    return prefix + (module.replace(".", "_") if prefix.endswith("_") else module)


def text_encoder_module_path(module: str) -> str:
    """A CLIP text-encoder module path in the layout kohya/ComfyUI expect (``text_model.`` re-inserted)."""
    if module.startswith("text_model."):
        return module
    if module.startswith(("encoder.", "embeddings.", "final_layer_norm")):
        return "text_model." + module
    return module


def text_encoder_to_kohya(state: dict[str, torch.Tensor], lora_alpha: float, prefix: str = "lora_te1",
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """peft LoRA weights of a (transformers 4 or 5) CLIP text encoder → ``lora_te1_text_model_…`` keys."""
    cleaned = {}
    for key, value in clean_peft_state(state).items():
        module, suffix = key.rsplit(".lora_", 1)
        cleaned[f"{text_encoder_module_path(module)}.lora_{suffix}"] = value
    return _to_kohya(cleaned, prefix + "_", lora_alpha, dtype)


def _to_kohya(state: dict[str, torch.Tensor], prefix: str, lora_alpha: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    modules = set()
    for key, value in state.items():
        match = _PEFT_KEY.match(key)
        module = match.group("module")
        name = comfy_module_name(prefix, module)
        part = "lora_down" if match.group("which") == "A" else "lora_up"
        out[f"{name}.{part}.weight"] = value.detach().to("cpu", dtype).contiguous()
        modules.add(name)
    for name in modules:
        if f"{name}.lora_down.weight" not in out or f"{name}.lora_up.weight" not in out:
            raise ValueError(f"LoRA module {name} lacks its lora_A or lora_B weight")
        out[f"{name}.alpha"] = torch.tensor(float(lora_alpha), dtype=torch.float32)
    return out


def save_diffusers_lora(state: dict[str, torch.Tensor], arch: str, out_dir: str | Path,
                        lora_config: Optional[dict] = None) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with the family pipeline's own ``save_lora_weights``."""
    import diffusers

    family = family_for(arch)
    cleaned = {k: v.detach().cpu().contiguous() for k, v in clean_peft_state(state).items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = getattr(diffusers, family.pipeline_class)
    if family.denoiser_attr == "unet":
        pipeline.save_lora_weights(out_dir, unet_lora_layers=cleaned, unet_lora_adapter_metadata=lora_config)
    else:
        pipeline.save_lora_weights(out_dir, transformer_lora_layers=cleaned, transformer_lora_adapter_metadata=lora_config)
    return out_dir / "pytorch_lora_weights.safetensors"


def export_all(out_dir: str | Path, arch: str, lora_state: dict[str, torch.Tensor], lora_rank: int,
               lora_alpha: float, adapter=None, metadata: Optional[dict] = None) -> dict[str, Path]:
    """Write the ComfyUI LoRA, the diffusers copy and (if given) the emotion adapter into ``out_dir``."""
    from safetensors.torch import save_file

    from ..checkpoint import check_finite

    check_finite(lora_state, "LoRA")
    if adapter is not None:
        check_finite(dict(adapter.state_dict()), "emotion adapter")
    out_dir = _output_folder(out_dir)
    meta = {"ss_network_dim": str(lora_rank), "ss_network_alpha": str(lora_alpha), "emofeedback2_arch": arch}
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    paths: dict[str, Path] = {}
    kohya = peft_to_kohya(lora_state, arch, lora_alpha)
    paths["kohya_lora"] = out_dir / KOHYA_FILE
    save_file(kohya, str(paths["kohya_lora"]), metadata=meta)
    lora_config = {"r": lora_rank, "lora_alpha": lora_alpha,
                   "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in clean_peft_state(lora_state)})}
    paths["diffusers_lora"] = save_diffusers_lora(lora_state, arch, out_dir / DIFFUSERS_DIR, lora_config)
    if adapter is not None:
        from ...engines.generation.emotion_adapter import save_emotion_adapter

        paths["emotion_adapter"] = save_emotion_adapter(adapter, out_dir / ADAPTER_FILE, metadata=metadata)
    return paths


def _output_folder(out_dir: str | Path) -> Path:
    from ..checkpoint import CheckpointError

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise CheckpointError(f"export folder {out_dir} (or a parent) is a file; choose a folder for --out") from exc
    except OSError as exc:
        raise CheckpointError(f"export folder {out_dir} cannot be created ({exc.strerror or exc})") from exc
    return out_dir


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, use_ema: bool = True) -> dict[str, Path]:
    """Export a training checkpoint folder (or a run folder with a ``latest`` pointer)."""
    from ..checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"--checkpoint {checkpoint} is not a folder; give a step-NNNNNN folder or a run folder")
    if not (checkpoint / "manifest.json").exists():
        root = checkpoint if (checkpoint / "latest").exists() else checkpoint / "checkpoints"
        found = latest_checkpoint(root) if root.is_dir() else None
        if found is None:
            raise CheckpointError(f"{checkpoint} is neither a checkpoint (step-NNNNNN with manifest.json) nor a run "
                                  "folder with checkpoints/latest")
        checkpoint = found
    weights, _state, meta = load_checkpoint(checkpoint)  # verifies the recorded sha256 of every file
    try:
        model = meta["config"]["model"]
        arch, rank, alpha = meta["arch"], int(model["lora_rank"]), float(model["lora_alpha"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint}/state.json lacks the run's model settings ({exc})") from exc
    from ..grpo import ema_export_choice, upgrade_ema_state

    ema_state = (_state or {}).get("ema") if any(k.startswith("ema.") for k in weights) else None
    if ema_state:  # an EMA from before diffusers' EMAModel: one averaged update per optimizer update
        ema_state = upgrade_ema_state(ema_state, int((_state or {}).get("updates", 0)))
    with_ema, note = ema_export_choice(ema_state, use_ema)  # the EMA only once it has warmed up
    print(f"[export] {note}")
    if with_ema:
        weights = {k[len("ema."):]: v for k, v in weights.items() if k.startswith("ema.")}
    else:
        weights = {k: v for k, v in weights.items() if not k.startswith("ema.")}
    lora = {k: v for k, v in weights.items() if k.startswith("denoiser.")}
    adapter = None
    adapter_state = {k[len("adapter."):]: v for k, v in weights.items() if k.startswith("adapter.")}
    if adapter_state:
        from ...engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig

        try:
            adapter = EmotionAdapter(EmotionAdapterConfig(**meta["adapter_config"]))
            full = adapter.state_dict()
            full.update(adapter_state)
            adapter.load_state_dict(full)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{checkpoint}: the emotion adapter does not match its recorded shape ({exc})") from exc
    if not lora:
        raise CheckpointError(f"{checkpoint} holds no LoRA tensors (denoiser.*); it is not a training checkpoint")
    return export_all(out_dir, arch, lora, rank, alpha, adapter,
                      metadata={"step": meta.get("step"), "source": str(checkpoint),
                                "weights": "ema" if with_ema else "live", "weights_note": note})
