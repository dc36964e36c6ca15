"""Validation of a training config: numbers in range, combinations that can work, input files present.

:func:`validate` reads no files or models; :func:`check_inputs` reads what the run will read (prompts,
targets, model and adapter paths) before anything heavy loads.
"""

from __future__ import annotations

from pathlib import Path

from ..config_fields import ConfigError, _number
from ...engines.generation.pipeline_families import ARCHES as MODEL_ARCHES
from ...engines.judge.options import ATTENTION_SETTINGS, QUANTIZATION_CHOICES
from .config_schema import TrainConfig


SEED_MAX = 2**63 - 1  # numpy's and torch's seeders both take 0..2**63-1 without wrapping
MAX_RESOLUTION = 8192


def _check_numbers(config: TrainConfig) -> None:
    """Every numeric field finite and in its range (NaN/inf would train NaN weights and exit 0)."""
    m, s, g, o = config.model, config.sampling, config.grpo, config.optim
    _number(m.lora_rank, "model.lora_rank", 1, 4096, integer=True)
    _number(m.lora_alpha, "model.lora_alpha", 0, None, lo_open=True)
    _number(m.adapter_hidden, "model.adapter_hidden", 0, 1 << 20, integer=True)
    _number(s.steps, "sampling.steps", 1, 10_000, integer=True)
    _number(s.eval_steps, "sampling.eval_steps", 1, 10_000, integer=True)
    _number(s.resolution, "sampling.resolution", 8, MAX_RESOLUTION, integer=True)
    _number(s.guidance_scale, "sampling.guidance_scale", 0, 100)
    _number(s.eta, "sampling.eta", 0, 100, lo_open=True)
    _number(s.sde_noise_level, "sampling.sde_noise_level", 0, 100, lo_open=True)
    _number(s.adapter_strength, "sampling.adapter_strength", -100, 100)
    _number(g.group_size, "grpo.group_size", 2, 1 << 16, integer=True)
    for name in ("groups_per_step", "batch_size", "updates_per_step", "inner_epochs"):
        _number(getattr(g, name), f"grpo.{name}", 1, 1 << 16, integer=True)
    _number(g.clip_range, "grpo.clip_range", 0, None, lo_open=True)
    _number(g.adv_clip, "grpo.adv_clip", 0, None, lo_open=True)
    _number(g.kl_beta, "grpo.kl_beta", 0, None)
    _number(g.train_timestep_fraction, "grpo.train_timestep_fraction", 0, 1, lo_open=True)
    for i, bound in enumerate(g.train_window):
        _number(bound, f"grpo.train_window[{i}]", 0, None, integer=True)
    _number(o.lr, "optim.lr", 0, 1, lo_open=True)  # lr = 0 would "train" for hours and change nothing
    if o.adapter_lr is not None:
        _number(o.adapter_lr, "optim.adapter_lr", 0, 1)
    _number(o.weight_decay, "optim.weight_decay", 0, None)
    if not isinstance(o.betas, list) or len(o.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers [beta1, beta2], e.g. [0.9, 0.999], got {o.betas!r}")
    for i, beta in enumerate(o.betas):
        _number(beta, f"optim.betas[{i}]", 0, 1, hi_open=True)
    _number(o.eps, "optim.eps", 0, 1, lo_open=True)
    _number(o.max_grad_norm, "optim.max_grad_norm", 0, None)
    _number(o.ema_decay, "optim.ema_decay", 0, 1, hi_open=True)
    _number(o.max_skipped_updates_in_a_row, "optim.max_skipped_updates_in_a_row", 1, 10**6, integer=True)
    for i, r in enumerate(config.rewards):
        _number(r.weight, f"rewards[{i}].weight", -1e6, 1e6)
    _number(config.seed, "seed", 0, SEED_MAX, integer=True)
    _number(config.max_steps, "max_steps", 0, 10**9, integer=True)
    _number(config.save_every, "save_every", 1, 10**9, integer=True)
    _number(config.keep_checkpoints, "keep_checkpoints", 1, 10**6, integer=True)
    _number(config.log_every, "log_every", 1, 10**9, integer=True)
    _number(config.image_log_every, "image_log_every", 0, 10**9, integer=True)
    _number(config.reward_workers, "reward_workers", 0, 64, integer=True)


def _check_device(device: str, name: str) -> None:
    """Refuse a device this machine cannot give (``cuda`` without a GPU trained on CPU with rc 0)."""
    from ...engines.devices import resolve_device

    if device in ("", "auto"):
        return
    try:
        resolve_device(device, error=ConfigError)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


NORMALIZATIONS = ("group", "batch", "none")
REWARD_KINDS = ("lvlm", "lvlm_reasoning", "color", "brightness", "clip_quality")
LVLM_REWARD_KINDS = ("lvlm", "lvlm_reasoning")
LOW_MASS_RULES = ("floor", "keep")  # rewards.LVLMVAReward's low_digit_mass: floor such an image at 0, or keep it


def check_one_normalization(rules: list[str]) -> str:
    """The one normalisation rule all reward terms share (or the weights stop meaning shares)."""
    if len(set(rules)) != 1 or rules[0] not in NORMALIZATIONS:
        raise ConfigError(
            f"rewards use normalisations {list(rules)}: give every [[rewards]] the same normalize, one of "
            f"{list(NORMALIZATIONS)} (\"group\" puts all terms on the scale of their within-group spread)")
    return rules[0]


def validate(config: TrainConfig) -> None:
    """Fail early, with the fix, on combinations that cannot work (no files or models are read)."""
    m, s, g = config.model, config.sampling, config.grpo
    if m.arch not in ("auto", *MODEL_ARCHES):
        raise ConfigError(f"model.arch must be auto or one of {', '.join(MODEL_ARCHES)}, got {m.arch!r}")
    if m.dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"model.dtype must be float32, float16 or bfloat16, got {m.dtype!r}")
    if not all(isinstance(t, str) and t.strip() for t in m.lora_targets):
        raise ConfigError(f"model.lora_targets must be a list of module names (strings), got {m.lora_targets!r}")
    if not config.rewards:
        raise ConfigError("at least one [[rewards]] entry is needed")
    _check_numbers(config)
    if s.resolution % 8:
        raise ConfigError(f"sampling.resolution must be a positive multiple of 8, got {s.resolution}")
    per_process = g.group_size * g.groups_per_step
    if per_process % g.batch_size:
        ok = [b for b in range(1, per_process + 1) if per_process % b == 0]
        raise ConfigError(
            f"grpo.batch_size={g.batch_size} must divide group_size*groups_per_step={per_process}; "
            f"choose one of {ok}"
        )
    micro = per_process // g.batch_size
    if micro % g.updates_per_step:
        raise ConfigError(
            f"grpo.updates_per_step={g.updates_per_step} must divide the {micro} micro-batches per step"
        )
    if g.train_window:
        if len(g.train_window) != 2:
            raise ConfigError("grpo.train_window must be [start, end) or empty")
        start, end = int(g.train_window[0]), int(g.train_window[1])
        if not 0 <= start < end <= s.steps:
            raise ConfigError(f"grpo.train_window {g.train_window} must satisfy 0 <= start < end <= sampling.steps={s.steps}")
    for i, r in enumerate(config.rewards):
        _check_reward(r, f"rewards[{i}]")
    check_one_normalization([r.normalize for r in config.rewards])  # before any reward model loads
    _validate_one_gpu_options(config)
    if config.max_steps < 0 or config.save_every < 1 or config.keep_checkpoints < 1:
        raise ConfigError("max_steps must be >= 0, save_every and keep_checkpoints >= 1")
    if config.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {config.device!r}")
    _check_device(config.device, "device")
    _check_quantized_base(config)
    if not str(config.output_dir).strip():
        raise ConfigError("output_dir is empty: set it to the run folder (checkpoints, logs, exports)")


def check_inputs(config: TrainConfig, need_model: bool = True) -> None:
    """Read what the run will read before anything heavy loads: prompts and targets parsed, model and
    adapter paths present. ``train --dry-run`` runs this too."""
    from .data import load_prompts, load_targets

    load_prompts(config.data.prompts_file)
    if str(config.data.targets) != "uniform":
        load_targets(config.data.targets)
    _check_local_path(config.model.pretrained, "model.pretrained", folder=True, required=need_model)
    if config.model.adapter_init:
        _check_local_path(config.model.adapter_init, "model.adapter_init", folder=False, required=True)
    if config.heldout.every and config.heldout.prompts_file:
        load_prompts(config.heldout.prompts_file, "heldout.prompts_file")
    quality = config.heldout.quality if config.heldout.every else {}
    if quality and quality.get("path"):
        _check_local_path(quality["path"], "heldout.quality.path", folder=True, required=True)
    for i, r in enumerate(config.rewards):
        if r.path:
            _check_local_path(r.path, f"rewards[{i}].path", folder=True, required=True)
        if r.adapter:
            _check_local_path(r.adapter, f"rewards[{i}].adapter", folder=True, required=True)
        if r.kind in LVLM_REWARD_KINDS:  # the judge read as its adapter was trained; preset files parsed
            from .reasoning_reward import reading_choice

            reading_choice(r, i)


def _check_local_path(value: str, name: str, folder: bool, required: bool) -> None:
    text = str(value).strip()
    if not text:
        if required:
            raise ConfigError(f"{name} is empty: set it to a local folder or hub id")
        return
    path = Path(text).expanduser()
    looks_local = path.exists() or text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
    if not folder:
        looks_local = True  # files (adapter .safetensors) are always local
    if not looks_local:
        return  # a hub id ("org/name"): the loader says whether it can be had
    if not path.exists():
        raise ConfigError(f"{name} = {text!r} does not exist; point it at an existing {'folder' if folder else 'file'}")
    if folder and not path.is_dir():
        raise ConfigError(f"{name} = {text!r} is a file; it must be a model folder")
    if not folder and not path.is_file():
        raise ConfigError(f"{name} = {text!r} is a folder; it must be a .safetensors file")


def _check_reward(r, where: str) -> None:
    """One reward spec, ``rewards[i]`` or ``heldout.quality`` (named ``where`` in the messages): its kind, model
    path, normalisation and how its model loads (dtype, device, quantization, attention, max_pixels, ...)."""
    if r.kind not in REWARD_KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(REWARD_KINDS)}, got {r.kind!r}")
    if r.preset and r.kind != "lvlm_reasoning":
        raise ConfigError(f"{where}.preset applies to kind = 'lvlm_reasoning' (the judge writes an answer in "
                          f"the preset's format): set kind = 'lvlm_reasoning' or remove preset")
    if r.kind in (*LVLM_REWARD_KINDS, "clip_quality") and not r.path:
        raise ConfigError(f"{where} ({r.kind}) needs path = a local model folder or hub id")
    if r.kind == "lvlm_reasoning":
        from .reasoning_reward import sampling_settings

        sampling_settings(r, where=where)  # samples, temperature, max_new_tokens, reading, unparsable_reward
    if r.normalize not in NORMALIZATIONS:
        raise ConfigError(f"{where}.normalize must be 'group', 'batch' or 'none', got {r.normalize!r}")
    if r.dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"{where}.dtype must be float32, float16 or bfloat16, got {r.dtype!r}")
    _check_device(r.device, f"{where}.device")
    if r.quantization not in QUANTIZATION_CHOICES:
        raise ConfigError(f"{where}.quantization must be {_choices(QUANTIZATION_CHOICES)}, got {r.quantization!r}")
    if r.quantization != "none" and r.kind not in LVLM_REWARD_KINDS:
        raise ConfigError(f"{where}.quantization applies to the LVLM judge only (kind = 'lvlm' or 'lvlm_reasoning')")
    if r.attention not in ATTENTION_SETTINGS:
        raise ConfigError(f"{where}.attention must be one of {', '.join(ATTENTION_SETTINGS)}, got {r.attention!r}")
    if r.attention != "auto" and r.kind not in LVLM_REWARD_KINDS:
        raise ConfigError(f"{where}.attention applies to the LVLM judge only (kind = 'lvlm' or 'lvlm_reasoning')")
    if r.role not in ("auto", "emotion", "quality"):
        raise ConfigError(f"{where}.role must be 'auto', 'emotion' or 'quality', got {r.role!r}")
    if r.low_digit_mass not in LOW_MASS_RULES:  # the digit readout's mass ('lvlm'); reasoning answers are parsed
        raise ConfigError(f"{where}.low_digit_mass must be {_choices(LOW_MASS_RULES)}, got {r.low_digit_mass!r}")
    if r.max_pixels < 0 or (r.max_pixels and r.kind not in LVLM_REWARD_KINDS):
        raise ConfigError(f"{where}.max_pixels must be >= 0 (0 = the adapter's training limit, else the "
                          "model's own) and applies to the LVLM judge only")
    if r.images_per_pass < 0:
        raise ConfigError(f"{where}.images_per_pass must be >= 0 (0 = all images in one pass)")


def _choices(names: tuple[str, ...]) -> str:
    """'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _validate_one_gpu_options(config: TrainConfig) -> None:
    """Judge placement, guards and the held-out check (issue 15's options)."""
    if config.grpo.ratio_norm not in ("none", "grpo_guard"):
        raise ConfigError(f"grpo.ratio_norm must be 'none' or 'grpo_guard', got {config.grpo.ratio_norm!r}")
    if config.reward_schedule not in ("step", "micro_batch"):
        raise ConfigError(f"reward_schedule must be 'step' or 'micro_batch', got {config.reward_schedule!r}")
    h = config.heldout
    if h.every < 0 or h.num_prompts < 1 or h.steps < 0:
        raise ConfigError("heldout.every and heldout.steps must be >= 0 and heldout.num_prompts >= 1")
    if h.every and not h.targets:
        raise ConfigError("heldout.targets must list at least one [valence, arousal] pair")
    if h.quality:
        from .config_loading import quality_spec

        _check_reward(quality_spec(h.quality), "heldout.quality")  # the same rules as a training reward
    for t in h.targets:
        if not (isinstance(t, (list, tuple)) and len(t) == 2 and all(-3 <= float(x) <= 3 for x in t)):
            raise ConfigError(f"heldout.targets entry {t!r} must be [valence, arousal] with both in [-3, 3]")


def _check_quantized_base(config: TrainConfig) -> None:
    """Names and combinations; the trainer checks the device it really got (device = "auto" on a CPU box)."""
    from .quantized_base import check_quantization

    check_quantization(config.model, config.device)
