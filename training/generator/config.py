"""Typed, documented configuration for GRPO training of the generator LoRA (+ emotion adapter).

One dataclass per concern (:mod:`.config_schema`), every field with a default and a ``help`` text
(``emofeedback2 train --help-config`` prints them). Configs load from TOML or YAML; ``--set
section.field=value`` overrides any field (:mod:`.config_loading`). :func:`validate` and
:func:`check_inputs` fail early with the fix (:mod:`.config_checks`); :func:`derive` does the batch
arithmetic the user would otherwise get wrong (:mod:`.config_derived`). This module is the one
import path for all of it.
"""

from __future__ import annotations

from ..config_fields import ConfigError
from .config_checks import (MAX_RESOLUTION, NORMALIZATIONS, SEED_MAX, check_inputs, check_one_normalization,
                            validate)
from .config_derived import Derived, derive, train_window, trained_step_indices_count
from .config_loading import (apply_overrides, config_from_dict, config_to_dict, describe_fields, load_config,
                             quality_spec)
from .config_schema import (SECTIONS, DataConfig, GRPOConfig, HeldoutConfig, ModelConfig, OptimConfig, RewardSpec,
                            SamplingConfig, TrainConfig)

__all__ = [
    "ConfigError", "MAX_RESOLUTION", "NORMALIZATIONS", "SEED_MAX", "check_inputs", "check_one_normalization",
    "validate", "Derived", "derive", "train_window", "trained_step_indices_count", "apply_overrides",
    "config_from_dict", "config_to_dict", "describe_fields", "load_config", "quality_spec", "SECTIONS", "DataConfig",
    "GRPOConfig", "HeldoutConfig",
    "ModelConfig", "OptimConfig", "RewardSpec", "SamplingConfig", "TrainConfig",
]
