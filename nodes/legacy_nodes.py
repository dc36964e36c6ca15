"""The node names and input names of graphs saved before the renames, kept as deprecated aliases.

ComfyUI restores a saved graph by class name: a UI workflow stores each node's ``type`` and its
widget values *by position* (``widgets_values``), an API prompt stores ``class_type`` and its inputs
*by name*. So each old class name stays registered, as a class that declares the old inputs in the
old order (new specs, old names), returns the old outputs (the new node's first outputs), maps old
names (and the LVLM Loader's old colour-heuristic label) to the new ones and runs the new node.
``DEPRECATED = True`` (read by ComfyUI's ``/object_info``) hides them from the node search and menu,
so old graphs load and run while new graphs get the new nodes.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

from . import conditioner_nodes, loader_nodes, loop_nodes, scorer_nodes, sweep_nodes, weights_nodes
from .errors import clean_errors

_MODULES = (loader_nodes, weights_nodes, conditioner_nodes, scorer_nodes, loop_nodes, sweep_nodes)
#: the new nodes' display names, to point at from each alias
NEW_DISPLAY_NAMES: dict[str, str] = {k: v for m in _MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}


def _renamed_spec(new_types: dict[str, Any], renames: dict[str, str], choices: dict[str, list]) -> dict[str, Any]:
    """The new INPUT_TYPES under the old input names (same order), with extra old combo values appended."""
    back = {new: old for old, new in renames.items()}
    old_types: dict[str, Any] = {}
    for group, inputs in new_types.items():
        old_group = {}
        for name, spec in inputs.items():
            old_name = back.get(name, name)
            if old_name in choices and isinstance(spec[0], list):
                spec = (choices[old_name] + [c for c in spec[0] if c not in choices[old_name]], *spec[1:])
            old_group[old_name] = spec
        old_types[group] = old_group
    return old_types


def _without(types: dict[str, Any], added: tuple[str, ...]) -> dict[str, Any]:
    return {group: {k: v for k, v in inputs.items() if k not in added} for group, inputs in types.items()}


def legacy_alias(
    old_id: str,
    new_id: str,
    new_cls: type,
    renames: Optional[dict[str, str]] = None,
    old_outputs: Optional[tuple[str, ...]] = None,
    old_values: Optional[dict[str, dict[str, str]]] = None,
    added: tuple[str, ...] = (),
) -> type:
    """A deprecated class named ``old_id`` that runs ``new_cls`` on graphs saved with the old interface.

    ``renames``: old input name → new one. ``old_outputs``: the old RETURN_NAMES (the new node's
    first outputs, in order). ``old_values``: per old input, old widget value → new value (the old
    values are also offered, first, in that combo). ``added``: optional inputs the new node gained
    since (not in the old interface: a saved graph has no value for them, they take their defaults). The new node's ``VALIDATE_INPUTS`` is kept
    (so old graphs get the same queue-time checks); the inputs it names must not be renamed.
    """
    renames = renames or {}
    old_values = old_values or {}
    names = old_outputs or tuple(getattr(new_cls, "RETURN_NAMES", new_cls.RETURN_TYPES))
    count = len(names)
    new_name = NEW_DISPLAY_NAMES[new_id]
    changes = ", ".join(f"{old} → {new}" for old, new in renames.items()) or "none"

    @clean_errors
    def run_legacy(self, **old_inputs: Any) -> tuple:
        inputs = {}
        for name, value in old_inputs.items():
            value = old_values.get(name, {}).get(value, value) if isinstance(value, str) else value
            inputs[renames.get(name, name)] = value
        node = new_cls()
        return tuple(getattr(node, new_cls.FUNCTION)(**inputs))[:count]

    attributes: dict[str, Any] = {
        "__doc__": f"Deprecated alias of {new_id} for graphs saved before the node renames.",
        "DEPRECATED": True,
        "CATEGORY": new_cls.CATEGORY,
        "FUNCTION": "run_legacy",
        "RETURN_TYPES": tuple(new_cls.RETURN_TYPES[:count]),
        "RETURN_NAMES": names,
        "OUTPUT_TOOLTIPS": tuple(getattr(new_cls, "OUTPUT_TOOLTIPS", ())[:count]),
        "DESCRIPTION": (
            "Deprecated: kept so that graphs saved before the node renames load and run unchanged. "
            f"For new graphs use {new_name} (renamed inputs: {changes})."
        ),
        "INPUT_TYPES": classmethod(
            lambda cls: _renamed_spec(_without(new_cls.INPUT_TYPES(), added), renames,
                                      {k: list(v) for k, v in old_values.items()})
        ),
        "run_legacy": run_legacy,
        "NEW_NODE_ID": new_id,
        "RENAMED_INPUTS": dict(renames),
    }
    validate = new_cls.__dict__.get("VALIDATE_INPUTS")
    if validate is not None:
        checked = set(inspect.getfullargspec(getattr(new_cls, "VALIDATE_INPUTS")).args) & set(renames.values())
        if checked:
            raise TypeError(f"{old_id}: VALIDATE_INPUTS of {new_id} checks renamed inputs {sorted(checked)}")
        attributes["VALIDATE_INPUTS"] = validate
    return type(old_id, (), {"__module__": __name__, "__qualname__": old_id, **attributes})


_TARGETS = {"target_valence": "valence", "target_arousal": "arousal"}
ALIASES: tuple[type, ...] = (
    legacy_alias(
        "EmoLVLMLoader", loader_nodes.NODE_ID, loader_nodes.LVLMLoader,
        old_values={"model": {loader_nodes.LEGACY_COLOUR_OPTION: loader_nodes.COLOUR_OPTION}},
        added=("judge_preset",),
    ),
    legacy_alias("EmotionWeightsLoader", weights_nodes.NODE_ID, weights_nodes.EmotionWeightsLoader),
    legacy_alias(
        "EmotionConditioner", conditioner_nodes.NODE_ID, conditioner_nodes.EmotionConditioner,
        renames={"text": "prompt"}, old_outputs=("conditioning", "encoded_text"),
    ),
    legacy_alias(
        "EmotionConditionerFromConditioning", conditioner_nodes.APPLY_NODE_ID,
        conditioner_nodes.EmotionConditionerFromConditioning,
    ),
    legacy_alias(
        "LVLMEmotionScorer", scorer_nodes.NODE_ID, scorer_nodes.LVLMEmotionScorer, renames=_TARGETS,
        old_outputs=("valence", "arousal", "reward", "analysis", "readings_json"),
    ),
    legacy_alias(
        "FeedbackPromptRefiner", loop_nodes.REFINER_NODE_ID, loop_nodes.FeedbackPromptRefiner, renames=_TARGETS,
    ),
    legacy_alias(
        "EmoRewardLoop", loop_nodes.LOOP_NODE_ID, loop_nodes.EmoRewardLoop,
        renames={"negative": "negative_prompt", **_TARGETS},
        old_outputs=("best_image", "all_candidates", "final_prompt", "history_json", "trajectory_plot"),
    ),
    legacy_alias(
        "EmotionSweepGrid", sweep_nodes.NODE_ID, sweep_nodes.EmotionSweepGrid,
        renames={"text": "prompt", "negative": "negative_prompt"},
    ),
)

NODE_CLASS_MAPPINGS: dict[str, type] = {alias.__name__: alias for alias in ALIASES}
#: core's way of marking an old node ("Load Checkpoint With Config (DEPRECATED)"), naming its replacement
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    alias.__name__: f"{NEW_DISPLAY_NAMES[alias.NEW_NODE_ID]} (DEPRECATED)" for alias in ALIASES
}
