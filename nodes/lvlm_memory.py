"""The LVLM judge under ComfyUI's model management (``comfy.model_management``).

ComfyUI keeps every model it manages in ``current_loaded_models`` and frees VRAM by asking them to
unload (``free_memory`` before sampling, ``unload_all_models`` behind the "Unload Models" button and
``POST /free``). :class:`JudgePatcher` is the small object that list holds for our judge: it answers
the questions ``comfy.model_management.LoadedModel`` asks a ``ModelPatcher`` (size, where the weights
are, load, partially unload, detach) for a whole transformers model. ComfyUI's own ModelPatcher is
not used because it moves weights module by module and may leave part of a model on the CPU in
low-VRAM mode; a judge runs whole or not at all, so this patcher loads and evicts it whole.

:class:`ComfyResidency` plugs it into the scorer (``engines/judge/residency.py``): before every call
the judge is loaded through ``load_models_gpu`` (which first evicts other models if VRAM is short);
after the call it stays registered — evictable whenever ComfyUI needs the memory — when
``keep_loaded`` is on, and is unloaded at once when it is off. An evicted judge is moved to the
offload device (a bitsandbytes-quantised one, which cannot move, is freed) and loaded back on demand.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any, Optional

import torch

from . import comfy_bridge

if TYPE_CHECKING:
    from ..engines.judge.lvlm_scorer import LVLMScorer

_LOG = logging.getLogger("EmoFeedback2")


class JudgePatcher:
    """What ComfyUI's model management needs from a managed model, for one LVLM scorer."""

    def __init__(self, scorer: "LVLMScorer", load_device: torch.device, offload_device: torch.device):
        self._scorer = weakref.ref(scorer)  # the scorer owns this patcher; no reference cycle
        self.load_device = torch.device(load_device)
        self.offload_device = torch.device(offload_device)
        self.parent = None  # not a clone of another patcher
        self.resident = False  # weights on load_device and counted by ComfyUI
        self.evictions = 0

    @property
    def scorer(self) -> "LVLMScorer":
        scorer = self._scorer()
        if scorer is None:
            raise RuntimeError("the LVLM scorer behind this patcher is gone")
        return scorer

    @property
    def model(self) -> Any:
        """The transformers model (ComfyUI logs its class name and watches it for garbage collection)."""
        return self.scorer.model

    # sizes and places
    def model_size(self) -> int:
        return self.scorer.weight_bytes

    def loaded_size(self) -> int:
        return self.model_size() if self.resident else 0

    def current_loaded_device(self) -> torch.device:
        return self.load_device if self.resident else self.offload_device

    def model_dtype(self) -> torch.dtype:
        return self.scorer.dtype

    # ModelPatcher features a whole-model judge does not have
    def model_patches_to(self, device: Any) -> None:
        return None

    def model_patches_models(self) -> list:
        return []

    def lowvram_patch_counter(self) -> int:
        return 0

    def is_clone(self, other: Any) -> bool:
        return other is self

    # loading and eviction (all or nothing)
    def partially_load(self, device_to: torch.device, extra_memory: float = 0, force_patch_weights: bool = False) -> int:
        if self.resident:
            return 0
        scorer = self.scorer
        scorer.ensure_weights()
        scorer.to(device_to)
        self.resident = True
        return self.model_size()

    def partially_unload(self, device_to: torch.device, memory_to_free: float = 0) -> int:
        freed = self.loaded_size()
        self._evict("to free memory")
        return freed

    def detach(self, unpatch_all: bool = True) -> Any:
        self._evict("unloaded")
        return self.scorer.model

    def _evict(self, why: str) -> None:
        if not self.resident:
            return
        scorer = self.scorer
        scorer.offload()
        self.resident = False
        self.evictions += 1
        where = "freed (quantised weights reload from disk when needed)" if scorer.quantized else f"moved to {self.offload_device}"
        _LOG.info("[EmoFeedback2] LVLM judge %s %s by ComfyUI's model management", scorer.name, where if why == "unloaded" else f"{where} {why}")


class ComfyResidency:
    """Scorer residency managed by ComfyUI: load through ``load_models_gpu``; ``keep_loaded`` decides what happens after."""

    def __init__(self, keep_loaded: bool, offload_device: Optional[torch.device] = None):
        self.keep_loaded = bool(keep_loaded)
        self._offload_device = offload_device
        self.patcher: Optional[JudgePatcher] = None

    def _patcher(self, scorer: "LVLMScorer") -> JudgePatcher:
        if self.patcher is None:
            offload = self._offload_device or torch.device(scorer.config.offload_device)
            self.patcher = JudgePatcher(scorer, scorer.device, offload)
        return self.patcher

    def place(self, scorer: "LVLMScorer") -> None:
        """Right after loading: wait on the offload device until ComfyUI loads the judge for its first use."""
        if not scorer.quantized:
            scorer.to(self._patcher(scorer).offload_device)

    def acquire(self, scorer: "LVLMScorer") -> None:
        patcher = self._patcher(scorer)
        scorer.ensure_weights()
        comfy_bridge.load_models_gpu([patcher])
        if not patcher.resident:  # ComfyUI found it registered but evicted: load it back
            patcher.partially_load(patcher.load_device)

    def release(self, scorer: "LVLMScorer") -> None:
        if not self.keep_loaded and self.patcher is not None:
            comfy_bridge.unload_model(self.patcher)
