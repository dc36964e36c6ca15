"""The one place in the node layer that touches ComfyUI's own modules, always lazily.

Keeping these few calls here lets every node module import (and be tested) without ComfyUI:
tests replace this module's functions, or install fakes for the modules named below.
"""

from __future__ import annotations

import os
from typing import Callable

ProgressCallback = Callable[[int, int], None]


def make_progress(total: int) -> ProgressCallback:
    """A ``(done, total)`` callback that drives ComfyUI's progress bar and honours Cancel.

    ``throw_exception_if_processing_interrupted`` raises ComfyUI's InterruptProcessingException
    when the user presses Cancel; engines let it propagate after leaving their state consistent.
    """
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def report(done: int, total_now: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total_now)

    return report


def check_interrupted() -> None:
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def torch_device():
    import comfy.model_management as mm

    return mm.get_torch_device()


def offload_device():
    import comfy.model_management as mm

    return mm.unet_offload_device()


def soft_empty_cache() -> None:
    import comfy.model_management as mm

    mm.soft_empty_cache()


def load_models_gpu(models: list) -> None:
    """Load ``models`` onto their devices through ComfyUI, which first evicts others if memory is short."""
    import comfy.model_management as mm

    mm.load_models_gpu(models)


def unload_model(model: object) -> bool:
    """Unload one managed model now and drop it from ComfyUI's list (there is no public call for one model)."""
    import comfy.model_management as mm

    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        if loaded.model is model:
            loaded.model_unload()
            mm.current_loaded_models.pop(index)
            return True
    return False


def ensure_model_folder(name: str) -> list[str]:
    """Register ``models/<name>`` with ComfyUI, keeping paths from extra_model_paths.yaml.

    Returns every folder ComfyUI now searches for ``name``.
    """
    import folder_paths

    default = os.path.join(folder_paths.models_dir, name)
    registered = folder_paths.folder_names_and_paths.get(name)
    if registered is None or default not in registered[0]:
        folder_paths.add_model_folder_path(name, default, is_default=True)
    return list(folder_paths.get_folder_paths(name))


def filename_list(name: str) -> list[str]:
    import folder_paths

    return list(folder_paths.get_filename_list(name))


def full_path(folder: str, filename: str):
    """Full path of a listed file, or None."""
    import folder_paths

    return folder_paths.get_full_path(folder, filename)


def full_path_or_raise(folder: str, filename: str) -> str:
    import folder_paths

    return folder_paths.get_full_path_or_raise(folder, filename)


def sampler_and_scheduler_names() -> tuple[list[str], list[str]]:
    """KSampler's sampler and scheduler choices, for nodes that sample like KSampler does.

    Called from ``INPUT_TYPES``; outside ComfyUI (plain imports, docs) the lists fall back to the
    stock defaults so the node classes still describe themselves.
    """
    try:
        import comfy.samplers
    except ImportError:
        return (["euler"], ["normal"])
    return (list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS))
