"""Fixture ``fake_comfy``: stand-ins for the ComfyUI modules our nodes reach through comfy_bridge.

Installs ``comfy`` (package), ``comfy.utils``, ``comfy.model_management`` and ``folder_paths`` into
``sys.modules`` for one test, with the signatures of ComfyUI v0.3.64:

- ``comfy.utils.ProgressBar(total, node_id=None)`` with ``update_absolute(value, total=None,
  preview=None)`` and ``update(value)``; like ComfyUI's server hook, every update first calls
  ``throw_exception_if_processing_interrupted()`` (that is how Cancel reaches a running node);
- ``comfy.model_management``: ``InterruptProcessingException``, ``interrupt_current_processing(value=True)``,
  ``processing_interrupted()``, ``throw_exception_if_processing_interrupted()`` (clears the flag and
  raises), ``get_torch_device()``, ``unet_offload_device()``, ``soft_empty_cache(force=False)``;
  the model registry: ``current_loaded_models`` of ``LoadedModel`` wrappers (which ask the managed
  object the same questions as v0.3.64's LoadedModel: ``model_size``, ``loaded_size``,
  ``current_loaded_device``, ``partially_load``, ``partially_unload``, ``detach``, ``is_clone`` …),
  ``load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
  force_full_load=False)``, ``free_memory(memory_required, device, keep_loaded=[])``,
  ``unload_all_models()``, ``loaded_models(only_currently_used=False)`` and ``get_free_memory(dev=None)``.
  One simplification: the memory budget (``FakeComfy.device_memory`` bytes) applies to every device,
  so eviction can be exercised on a CPU-only machine (real ComfyUI never evicts for the CPU);
- ``folder_paths`` rooted at a temporary ``base_path`` with ``models_dir``,
  ``folder_names_and_paths``, ``add_model_folder_path(folder_name, full_folder_path, is_default=False)``,
  ``get_folder_paths``, ``get_filename_list``, ``get_full_path``, ``get_full_path_or_raise``.

The returned :class:`FakeComfy` records progress updates and can trigger Cancel after N updates
(``fake_comfy.interrupt_after(n)``). Other fixtures may add submodules (e.g. ``comfy.sample``) to
``fake_comfy.comfy``.
"""

from __future__ import annotations

import os
import sys
import threading
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import torch

SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


@dataclass
class FakeComfy:
    """Handles on the fake modules plus what the test wants to observe or trigger."""

    base_path: Path
    comfy: types.ModuleType
    utils: types.ModuleType
    model_management: types.ModuleType
    folder_paths: types.ModuleType
    progress_updates: list = field(default_factory=list)  # (value, total) per update, in order
    empty_cache_calls: int = 0
    device_memory: float = 80e9  # the simulated device's capacity in bytes (an 80 GB card)
    _interrupt_after: Optional[int] = None

    @property
    def models_dir(self) -> Path:
        return Path(self.folder_paths.models_dir)

    def interrupt_after(self, n_updates: int) -> None:
        """Press Cancel once ``n_updates`` progress updates have happened (0 = before the first)."""
        self._interrupt_after = n_updates
        if n_updates <= len(self.progress_updates):
            self.model_management.interrupt_current_processing(True)

    def _on_update(self, value, total) -> None:
        self.progress_updates.append((value, total))
        if self._interrupt_after is not None and len(self.progress_updates) >= self._interrupt_after:
            self._interrupt_after = None
            self.model_management.interrupt_current_processing(True)


def _make_model_management(state: FakeComfy) -> types.ModuleType:
    mm = types.ModuleType("comfy.model_management")
    lock = threading.RLock()
    flag = {"interrupt": False}

    class InterruptProcessingException(Exception):
        pass

    def interrupt_current_processing(value=True):
        with lock:
            flag["interrupt"] = value

    def processing_interrupted():
        with lock:
            return flag["interrupt"]

    def throw_exception_if_processing_interrupted():
        with lock:
            if flag["interrupt"]:
                flag["interrupt"] = False
                raise InterruptProcessingException()

    def get_torch_device():
        return torch.device("cpu")

    def unet_offload_device():
        return torch.device("cpu")

    def soft_empty_cache(force=False):
        state.empty_cache_calls += 1

    current_loaded_models: list = []

    class LoadedModel:
        def __init__(self, model):
            self._model = weakref.ref(model)
            self.device = model.load_device
            self.currently_used = True
            self.real_model = None

        @property
        def model(self):
            return self._model()

        def model_memory(self):
            return self.model.model_size()

        def model_loaded_memory(self):
            return self.model.loaded_size()

        def model_offloaded_memory(self):
            return self.model.model_size() - self.model.loaded_size()

        def model_memory_required(self, device):
            if device == self.model.current_loaded_device():
                return self.model_offloaded_memory()
            return self.model_memory()

        def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
            self.model.model_patches_to(self.device)
            self.model.model_patches_to(self.model.model_dtype())
            extra = lowvram_model_memory or 1e32
            self.model.partially_load(self.device, extra, force_patch_weights=force_patch_weights)
            real_model = self.model.model
            self.real_model = weakref.ref(real_model)
            self.model_finalizer = weakref.finalize(real_model, cleanup_models)  # as ComfyUI does
            return real_model

        def model_unload(self, memory_to_free=None, unpatch_weights=True):
            if memory_to_free is not None and memory_to_free < self.model.loaded_size():
                freed = self.model.partially_unload(self.model.offload_device, memory_to_free)
                if freed >= memory_to_free:
                    return False
            self.model.detach(unpatch_weights)
            if getattr(self, "model_finalizer", None) is not None:
                self.model_finalizer.detach()
            self.model_finalizer = None
            self.real_model = None
            return True

        def __eq__(self, other):
            return self.model is other.model

        def is_dead(self):
            return self.real_model is not None and self.real_model() is not None and self.model is None

    def cleanup_models():
        for i in range(len(current_loaded_models) - 1, -1, -1):
            real = current_loaded_models[i].real_model
            if real is not None and real() is None:
                current_loaded_models.pop(i)

    def get_free_memory(dev=None, torch_free_too=False):
        used = sum(m.model_loaded_memory() for m in current_loaded_models if m.model is not None)
        free = state.device_memory - used
        return (free, free) if torch_free_too else free

    def free_memory(memory_required, device, keep_loaded=[]):
        candidates = []
        for i in range(len(current_loaded_models) - 1, -1, -1):
            shift = current_loaded_models[i]
            if shift.device == device and shift not in keep_loaded and not shift.is_dead():
                candidates.append((-shift.model_offloaded_memory(), shift.model_memory(), i))
                shift.currently_used = False
        unloaded = []
        for *_, i in sorted(candidates):
            free = get_free_memory(device)
            if free > memory_required:
                break
            if current_loaded_models[i].model_unload(memory_required - free):
                unloaded.append(i)
        removed = [current_loaded_models.pop(i) for i in sorted(unloaded, reverse=True)]
        if removed:
            soft_empty_cache()
        return removed

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        to_load = []
        for x in set(models) | {m for x in models for m in x.model_patches_models()}:
            candidate = LoadedModel(x)
            if candidate in current_loaded_models:
                loaded = current_loaded_models[current_loaded_models.index(candidate)]
                loaded.currently_used = True
                to_load.append(loaded)
            else:
                to_load.append(candidate)
        needed: dict = {}
        for loaded in to_load:
            needed[loaded.device] = needed.get(loaded.device, 0) + loaded.model_memory_required(loaded.device)
        for device, amount in needed.items():
            free_memory(amount * 1.1 + memory_required, device)
        for loaded in to_load:
            loaded.model_load(0, force_patch_weights=force_patch_weights)
            if loaded in current_loaded_models:
                current_loaded_models.remove(loaded)
            current_loaded_models.insert(0, loaded)

    def unload_all_models():
        free_memory(1e30, get_torch_device())

    def loaded_models(only_currently_used=False):
        return [m.model for m in current_loaded_models if m.currently_used or not only_currently_used]

    mm.current_loaded_models = current_loaded_models
    mm.LoadedModel = LoadedModel
    mm.get_free_memory = get_free_memory
    mm.free_memory = free_memory
    mm.load_models_gpu = load_models_gpu
    mm.unload_all_models = unload_all_models
    mm.loaded_models = loaded_models
    mm.InterruptProcessingException = InterruptProcessingException
    mm.interrupt_current_processing = interrupt_current_processing
    mm.processing_interrupted = processing_interrupted
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.get_torch_device = get_torch_device
    mm.unet_offload_device = unet_offload_device
    mm.soft_empty_cache = soft_empty_cache
    return mm


def _make_utils(state: FakeComfy, mm: types.ModuleType) -> types.ModuleType:
    utils = types.ModuleType("comfy.utils")

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        # ComfyUI's server hook checks for Cancel on every progress update (main.py hijack_progress).
        mm.throw_exception_if_processing_interrupted()
        state._on_update(value, total)

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total
            self.current = 0
            self.hook = utils.PROGRESS_BAR_HOOK
            self.node_id = node_id

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            if value > self.total:
                value = self.total
            self.current = value
            if self.hook is not None:
                self.hook(self.current, self.total, preview, node_id=self.node_id)

        def update(self, value):
            self.update_absolute(self.current + value)

    utils.PROGRESS_BAR_HOOK = hook
    utils.ProgressBar = ProgressBar
    return utils


def _make_folder_paths(base_path: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.base_path = str(base_path)
    fp.models_dir = os.path.join(fp.base_path, "models")
    fp.supported_pt_extensions = set(SUPPORTED_PT_EXTENSIONS)
    fp.folder_names_and_paths = {
        "checkpoints": ([os.path.join(fp.models_dir, "checkpoints")], set(SUPPORTED_PT_EXTENSIONS)),
        "loras": ([os.path.join(fp.models_dir, "loras")], set(SUPPORTED_PT_EXTENSIONS)),
        "vae": ([os.path.join(fp.models_dir, "vae")], set(SUPPORTED_PT_EXTENSIONS)),
    }

    def map_legacy(folder_name: str) -> str:
        return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        folder_name = map_legacy(folder_name)
        if folder_name in fp.folder_names_and_paths:
            paths, _exts = fp.folder_names_and_paths[folder_name]
            if full_folder_path in paths:
                if is_default and paths[0] != full_folder_path:
                    paths.remove(full_folder_path)
                    paths.insert(0, full_folder_path)
            elif is_default:
                paths.insert(0, full_folder_path)
            else:
                paths.append(full_folder_path)
        else:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    def get_folder_paths(folder_name: str) -> list[str]:
        return fp.folder_names_and_paths[map_legacy(folder_name)][0][:]

    def get_filename_list(folder_name: str) -> list[str]:
        folder_name = map_legacy(folder_name)
        paths, extensions = fp.folder_names_and_paths[folder_name]
        found: set[str] = set()
        for directory in paths:
            if not os.path.isdir(directory):
                continue
            for dirpath, _subdirs, filenames in os.walk(directory, followlinks=True):
                for name in filenames:
                    if not extensions or os.path.splitext(name)[1].lower() in extensions:
                        found.add(os.path.relpath(os.path.join(dirpath, name), directory))
        return sorted(found)

    def get_full_path(folder_name: str, filename: str):
        folder_name = map_legacy(folder_name)
        if folder_name not in fp.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for directory in fp.folder_names_and_paths[folder_name][0]:
            full_path = os.path.join(directory, filename)
            if os.path.isfile(full_path):
                return full_path
        return None

    def get_full_path_or_raise(folder_name: str, filename: str) -> str:
        full_path = get_full_path(folder_name, filename)
        if full_path is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return full_path

    fp.map_legacy = map_legacy
    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = get_folder_paths
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    fp.get_full_path_or_raise = get_full_path_or_raise
    return fp


@pytest.fixture
def fake_comfy(tmp_path, monkeypatch) -> FakeComfy:
    """Fake ComfyUI modules in ``sys.modules`` for one test (removed afterwards)."""
    base = tmp_path / "ComfyUI"
    (base / "models").mkdir(parents=True)
    comfy_pkg = types.ModuleType("comfy")
    comfy_pkg.__path__ = []  # a package, so `import comfy.x` resolves submodules from sys.modules
    state = FakeComfy(base_path=base, comfy=comfy_pkg, utils=None, model_management=None, folder_paths=None)  # type: ignore[arg-type]
    state.model_management = _make_model_management(state)
    state.utils = _make_utils(state, state.model_management)
    state.folder_paths = _make_folder_paths(base)
    comfy_pkg.utils = state.utils
    comfy_pkg.model_management = state.model_management
    monkeypatch.setitem(sys.modules, "comfy", comfy_pkg)
    monkeypatch.setitem(sys.modules, "comfy.utils", state.utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", state.model_management)
    monkeypatch.setitem(sys.modules, "folder_paths", state.folder_paths)
    return state
