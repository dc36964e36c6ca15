"""Model families: one small module of differences per diffusers pipeline family (see :mod:`.base`).

``family_for(arch)`` gives the family of an architecture name; the names are the generation
engine's (:data:`emofeedback2.engines.generation.pipeline_families.ARCHES`).
"""

from __future__ import annotations

from .base import Family
from .flux import FluxFamily
from .flux2_klein import Flux2KleinFamily
from .qwen_image import QwenImageFamily
from .stable_diffusion import SD3Family, SD15Family, SDXLFamily
from .z_image import ZImageFamily

FAMILIES: dict[str, Family] = {cls.arch: cls() for cls in (SD15Family, SDXLFamily, SD3Family, FluxFamily,
                                                          Flux2KleinFamily, QwenImageFamily, ZImageFamily)}
ARCHES = tuple(FAMILIES)


def family_for(arch: str) -> Family:
    """The family of ``arch`` (``sd15``, ``sdxl``, ``sd3``, ``flux``, ``flux2_klein``, ``qwen_image``, ``z_image``)."""
    try:
        return FAMILIES[arch]
    except KeyError:
        raise ValueError(f"unknown model family {arch!r}; one of {', '.join(ARCHES)}") from None


__all__ = ["ARCHES", "FAMILIES", "Family", "family_for"]
