"""Where the LVLM judge lives during training: device, dtype, quantisation, swapping, images per pass.

The options of one ``[[rewards]]`` entry of kind ``lvlm`` become an
:class:`~..engines.lvlm_scorer.LVLMConfig`:

- ``device = "cuda:1"`` keeps the judge on a second GPU (resident: nothing to swap; with
  ``reward_schedule = "micro_batch"`` each micro-batch is scored while the next one is sampled);
  ``device = "cpu"`` keeps it in host memory (slow, frees the GPU);
- ``offload = true`` swaps it onto the training device for its call and back afterwards — with
  ``reward_schedule = "step"`` (the default) that is once per step, not once per micro-batch;
- ``quantization = "8bit" | "4bit"`` loads the weights through bitsandbytes (CUDA only);
- ``images_per_pass`` caps the images of one forward pass inside the step's single call.

Quantised loading itself belongs to the engines' loader (``LVLMConfig.quantization``); this module
only checks what it can before a long load starts and says what to install or change.
"""

from __future__ import annotations

import dataclasses
import importlib.util

from ..errors import UserError


class JudgePlacementError(UserError, ValueError):
    """A judge placement option cannot be honoured in this environment."""


def _has_field(cls, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


def check_quantization(quantization: str, device: str) -> None:
    """Fail early, with the fix, when 8/4-bit loading cannot work here."""
    if quantization == "none":
        return
    if quantization not in ("8bit", "4bit"):
        raise JudgePlacementError(f"quantization must be 'none', '8bit' or '4bit', got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise JudgePlacementError(
            f"quantization = {quantization!r} needs bitsandbytes: pip install bitsandbytes (CUDA GPUs), "
            "or set quantization = 'none' and offload = true to swap the judge in once per step instead")
    if device == "cpu":
        raise JudgePlacementError(f"quantization = {quantization!r} runs on CUDA GPUs only; the judge's device is "
                                  "'cpu': set rewards.<i>.device to a GPU or quantization = 'none'")


def judge_config(path: str, device: str = "", dtype: str = "float32", offload: bool = False,
                 quantization: str = "none", images_per_pass: int = 0, attention: str = "auto"):
    """The :class:`LVLMConfig` of a training judge (see the module docstring)."""
    from .options import attention_setting
    from .lvlm_scorer import LVLMConfig

    kwargs = dict(model=path, dtype=dtype, offload_after_use=offload, max_images_per_pass=int(images_per_pass),
                  attn_implementation=attention_setting(attention))
    if device:
        kwargs["device"] = device
    if quantization != "none":
        check_quantization(quantization, device)
        if not _has_field(LVLMConfig, "quantization"):
            raise JudgePlacementError(
                "this build's LVLM loader has no quantization option (engines.lvlm_scorer.LVLMConfig.quantization); "
                "update emofeedback2, or set quantization = 'none'")
        kwargs["quantization"] = quantization
    return LVLMConfig(**kwargs)
