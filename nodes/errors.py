"""Errors as ComfyUI shows them: a plain type name and the message, never the pack's module path.

ComfyUI's error dialog prints ``full_type_name(type(e))`` — the class's module and qualname unless
the module is ``builtins`` (execution.py). A custom node's modules are named after their folder
path, so ``LVLMLoadError`` would read ``/home/…/custom_nodes/<pack>.engines.lvlm_scorer.LVLMLoadError``.
:func:`clean_errors` wraps every node's FUNCTION: an exception whose class comes from this pack is
re-raised as an instance of a display twin of that class — a subclass (so ``except LVLMLoadError``
still catches it) whose module reads ``builtins`` — with the same message, attributes and traceback.
Exceptions from elsewhere (ComfyUI's Cancel, torch, builtins) pass through untouched.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: this pack's top-level module name ("emofeedback2" when pip-installed, a path inside ComfyUI)
PACK_MODULE = __name__.rsplit(".nodes.", 1)[0]
_TWINS: dict[type, type] = {}


def _from_this_pack(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module == PACK_MODULE or module.startswith(PACK_MODULE + ".")


def display_class(cls: type) -> type:
    """The twin of ``cls`` that ComfyUI prints as just ``cls.__name__``."""
    twin = _TWINS.get(cls)
    if twin is None:
        twin = type(cls.__name__, (cls,), {"__module__": "builtins", "__qualname__": cls.__name__, "__doc__": cls.__doc__})
        _TWINS[cls] = twin
    return twin


def comfy_facing(exc: BaseException) -> BaseException:
    """``exc`` itself, or (for this pack's exception classes) its display twin with the same content."""
    cls = type(exc)
    if not _from_this_pack(cls):
        return exc
    clean = display_class(cls).__new__(display_class(cls))
    clean.args = exc.args
    clean.__dict__.update(exc.__dict__)
    clean.__cause__ = exc.__cause__
    clean.__suppress_context__ = True
    return clean.with_traceback(exc.__traceback__)


def clean_errors(method: F) -> F:
    """Decorator for a node's FUNCTION method: errors leave it readable in ComfyUI's dialog."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            clean = comfy_facing(exc)
            if clean is exc:
                raise
            raise clean from exc.__cause__

    return wrapper  # type: ignore[return-value]
