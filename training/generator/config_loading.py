"""Reading a training config: TOML/YAML files, ``--set`` overrides, and the field listing of ``--help-config``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config_fields import ConfigError, _coerce, _fill
from .config_schema import SECTIONS, RewardSpec, TrainConfig


def config_from_dict(data: dict) -> TrainConfig:
    data = dict(data)
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        kwargs[name] = _fill(cls, data.pop(name, {}) or {}, name)
    rewards = data.pop("rewards", None)
    if rewards is not None:
        if not isinstance(rewards, list) or not rewards:
            raise ConfigError("rewards must be a non-empty list of tables ([[rewards]] in TOML)")
        kwargs["rewards"] = [_fill(RewardSpec, r, f"rewards[{i}]") for i, r in enumerate(rewards)]
    top = _fill(_TopLevel, data, "top level")
    kwargs.update(dataclasses.asdict(top))
    return TrainConfig(**kwargs)


# The scalar top-level fields of TrainConfig (not the sections, not rewards), for the refusal of unknown names:
# derived from TrainConfig itself, so their names, types and defaults cannot drift from it.
_TopLevel = dataclasses.make_dataclass("_TopLevel", [
    (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
    for f in dataclasses.fields(TrainConfig) if f.name not in SECTIONS and f.name != "rewards"])


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) training config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see training/configs/*.toml for examples")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"config {path} must end in .toml, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    if suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    else:
        import yaml

        try:  # safe_load: a '!!python/...' tag is refused, never executed
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"config {path} is not valid (safe) YAML: {detail}") from exc
        data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a table of sections (model, sampling, ...), "
                          f"not a {type(data).__name__}")
    return config_from_dict(data)


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``section.field=value`` (or top-level ``field=value``) strings; values parse as JSON when they can."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. grpo.group_size=4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        target: Any = config
        if parts[0] == "rewards":
            if len(parts) != 3 or not parts[1].isdigit():
                raise ConfigError(f"override {key!r}: reward fields are set as rewards.<index>.<field>")
            index = int(parts[1])
            if index >= len(config.rewards):
                raise ConfigError(f"override {key!r}: there are only {len(config.rewards)} rewards")
            target, parts = config.rewards[index], parts[2:]
        elif len(parts) == 2:
            if parts[0] not in SECTIONS:
                raise ConfigError(f"override {key!r}: unknown section {parts[0]!r}; sections: {sorted(SECTIONS)}")
            target, parts = getattr(config, parts[0]), parts[1:]
        elif len(parts) != 1:
            raise ConfigError(f"override {key!r}: use section.field=value")
        names = {f.name: f for f in dataclasses.fields(target)}
        if parts[0] not in names or parts[0] in SECTIONS or parts[0] == "rewards":
            raise ConfigError(f"override {key!r}: unknown field; known: {sorted(n for n in names if n not in SECTIONS)}")
        setattr(target, parts[0], _coerce(value, names[parts[0]].type, key))
    return config


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def describe_fields() -> str:
    """Every field with its default and help text (``emofeedback2 train --help-config``)."""
    lines = []
    for section, cls in list(SECTIONS.items()) + [("rewards[i]", RewardSpec)]:
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}  # {f.metadata.get('help', '')}")
    lines.append("[top level]")
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS or f.name == "rewards":
            continue
        lines.append(f"  {f.name} = {f.default!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def quality_spec(table: dict) -> RewardSpec:
    """``heldout.quality`` as a reward spec with role 'quality' (unknown fields refused, naming them)."""
    if not isinstance(table, dict):
        raise ConfigError(f"heldout.quality must be a table of reward fields (kind, path, ...), got {table!r}")
    spec = _fill(RewardSpec, table, "heldout.quality")
    spec.role = "quality"
    return spec
