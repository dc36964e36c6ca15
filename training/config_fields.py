"""Typed config fields shared by the generator and judge trainers: field declaration with help text,
coercion of TOML/YAML/``--set`` values to the declared type, and range checks that name the field."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import field
from typing import Any, Optional

from ..engines.errors import UserError


class ConfigError(UserError, ValueError):
    """The training configuration is inconsistent or names something that does not exist."""


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: json.loads(json.dumps(value)), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert TOML/YAML/CLI values to the field's declared type (strings from --set are parsed)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if value is None:
        if "Optional" in text or "None" in text:
            return None
        raise ConfigError(f"{where} may not be empty")
    optional = "Optional" in text or "None" in text
    base = text.replace("Optional[", "").replace("]", "").replace(" | None", "").strip()
    if isinstance(value, str) and optional and value.lower() in ("none", "null"):
        return None
    if isinstance(value, str) and base != "str":
        try:
            value = json.loads(value) if base not in ("bool",) else value
        except json.JSONDecodeError as exc:
            if base == "float" and value.strip().lower() in ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity"):
                raise ConfigError(f"{where} must be a finite number, got {value}") from exc
            raise ConfigError(f"{where}: cannot read {value!r} as {base}") from exc
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if base in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(value)  # true/false or a list where a number belongs
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base == "float":
            return float(value)
        if base == "str":
            return str(value)
        if base == "list":
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return list(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: expected {base}, got {value!r}") from exc
    return value


def _fill(cls: type, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} in [{where}]; known: {sorted(names)}")
    kwargs = {k: _coerce(v, names[k].type, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _number(value: Any, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
            lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> float:
    """``value`` as a finite number inside the given bounds, or a ConfigError naming the field and range."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        fmt = (lambda x: str(int(x))) if integer else (lambda x: f"{x:g}")
        span = f"{left}{'-inf' if lo is None else fmt(lo)}, {'inf' if hi is None else fmt(hi)}{right}"
        raise ConfigError(f"{name} must be in {span}, got {value}")
    return value
