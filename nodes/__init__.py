"""ComfyUI node classes (V1 API): thin wrappers that parse widgets, call an engine, shape outputs.

Each node module exports its own NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS; this file merges
them. Node modules import ComfyUI only through :mod:`.comfy_bridge`, lazily, so they import anywhere.
"""

if "." not in __name__:
    # Imported as a top-level ``nodes`` (e.g. from the repo root): that name belongs to ComfyUI.
    raise ImportError(
        "this 'nodes' folder is part of the EmoFeedback2 pack, not ComfyUI's nodes module; "
        "import emofeedback2.nodes, or load the pack through ComfyUI's custom_nodes"
    )

from . import conditioner_nodes, legacy_nodes, loader_nodes, loop_nodes, scorer_nodes, sweep_nodes, weights_nodes

# legacy_nodes: the class names of graphs saved before the renames, as hidden (DEPRECATED) aliases
_MODULES = (loader_nodes, weights_nodes, scorer_nodes, conditioner_nodes, loop_nodes, sweep_nodes, legacy_nodes)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
