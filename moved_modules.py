"""Old module paths of the flat layout (before the sub-packages) and where each module lives now.

``from emofeedback2.engines.lvlm_scorer import LVLMScorer`` keeps working: importing an old path
gives the module at its new path (the same module object) with a ``DeprecationWarning`` that names
the new path. Nothing else in the package imports an old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old path -> new path, both relative to the package root
MOVED = {
    "engines.color_scorer": "engines.judge.color_scorer",
    "engines.lvlm_scorer": "engines.judge.lvlm_scorer",
    "engines.lvlm_residency": "engines.judge.residency",
    "engines.lvlm_options": "engines.judge.options",
    "engines.paper_format": "engines.judge.paper_format",
    "engines.scoring": "engines.judge.scoring",
    "training.judge_placement": "engines.judge.placement",
    "engines.generation": "engines.generation.protocol",
    "engines.diffusers_backend": "engines.generation.diffusers_backend",
    "engines.comfy_backend": "engines.generation.comfy_backend",
    "engines.emotion_adapter": "engines.generation.emotion_adapter",
    "engines.sweep": "engines.generation.sweep",
    "engines.feedback_loop": "engines.loop.feedback_loop",
    "engines.refiner": "engines.loop.refiner",
    "engines.steering": "engines.loop.steering",
    "engines.trajectory_plot": "engines.loop.trajectory_plot",
    "engines.demo": "engines.demo.toy_demo",
    "engines.toy_plants": "engines.demo.toy_plants",
    "training.config": "training.generator.config",
    "training.data": "training.generator.data",
    "training.export": "training.generator.export",
    "training.guards": "training.generator.guards",
    "training.heldout": "training.generator.heldout",
    "training.memory_plan": "training.generator.memory_plan",
    "training.policies": "training.generator.policies",
    "training.precision": "training.generator.precision",
    "training.prompt_cache": "training.generator.prompt_cache",
    "training.real_configs": "training.generator.real_configs",
    "training.resume_guard": "training.generator.resume_guard",
    "training.rewards": "training.generator.rewards",
    "training.trainer": "training.generator.trainer",
    "training.judge_config": "training.judge.config",
    "training.judge_data": "training.judge.data",
    "training.judge_eval": "training.judge.evaluate",
    "training.judge_grpo": "training.judge.grpo_objective",
    "training.judge_importers": "training.judge.importers",
    "training.judge_objective": "training.judge.soft_label_objective",
    "training.judge_trainer": "training.judge.trainer",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, root: str):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        prefix = self.root + "."
        if not fullname.startswith(prefix) or fullname[len(prefix):] not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = f"{self.root}.{MOVED[spec.name[len(self.root) + 1:]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        module = importlib.import_module(new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        pass  # the module at its new path is already executed


def install(root: str) -> None:
    """Serve the old paths under the package ``root`` (its import name: ``emofeedback2`` or ComfyUI's folder)."""
    if not any(isinstance(f, _MovedModuleFinder) and f.root == root for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder(root))
