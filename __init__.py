"""ComfyUI-EmoFeedback2: continuous valence/arousal emotion control with LVLM feedback.

ComfyUI imports this file from ``custom_nodes/<folder>/__init__.py``; pip installs the same folder as
the ``emofeedback2`` package (engines, training, CLI). Every import inside the pack is relative so
both routes work, and importing this module never imports ComfyUI itself.

The node mappings load on first access (ComfyUI reads them right after import), so the command line
and the training package do not pay for, or depend on, the node layer.
"""

__version__ = "0.1.0"

from . import moved_modules as _moved_modules  # old flat module paths keep importing (DeprecationWarning)

_moved_modules.install(__name__)
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]


def __getattr__(name: str):
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
