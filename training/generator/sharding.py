"""GRPO under FSDP (accelerate): what changes when every process holds only a shard of each parameter.

``accelerate launch --config_file training/configs/accelerate_fsdp.yaml`` shards the whole policy
(frozen denoiser, LoRA, emotion adapter) across the processes; :class:`~.policy_net.PolicyNet` names
the denoiser's blocks (``_no_split_modules``) so each block becomes one FSDP unit. What the trainer
must do differently, and does through this module:

- the trainable parameters are the *sharded* ones accelerate put in the model (FSDP2: ``DTensor``);
- saving a checkpoint or exporting the LoRA gathers full tensors of the *trainable* parameters
  only. ``accelerator.get_state_dict`` would gather the whole model, the frozen base included
  (40 GB for Qwen-Image), to keep ~100 MB of LoRA; gathering is collective, so every process calls
  these functions and only the main process writes;
- the optimizer state is saved full (``torch.distributed.checkpoint``'s ``get_optimizer_state_dict``,
  keyed by parameter name) and every process re-shards it on resume;
- the pipeline loads on the CPU and only its unsharded parts (text encoders, VAE) move to each GPU:
  accelerate's ``prepare`` moves each denoiser shard, so no GPU ever holds the whole base;
- FSDP1 needs ``use_orig_params`` (frozen and trainable parameters share its flat buffers otherwise);
  FSDP2 takes mixed ``requires_grad`` as it is; a quantised base is refused under FSDP.

Without FSDP every function here is the plain single-process operation.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

from ..config_fields import ConfigError
from ..grpo import upgrade_ema_state


def is_sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _fsdp_version(accelerator: Any) -> int:
    return int(getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) or 1)


def check_sharding(accelerator: Any, model: Any = None) -> None:
    """Refuse FSDP settings under which a frozen base with a trainable LoRA cannot train."""
    if not is_sharded(accelerator):
        return
    if model is not None and getattr(model, "quantization", "none") != "none":
        raise ConfigError(
            f"model.quantization = \"{model.quantization}\" under FSDP: a quantised base is not sharded here; "
            "either shard the bf16 base (--set model.quantization=none) or train on one GPU without FSDP")
    if _fsdp_version(accelerator) == 2:
        return
    if not getattr(accelerator.state.fsdp_plugin, "use_orig_params", False):
        raise ConfigError(
            "FSDP1 shards frozen base and trainable LoRA weights into shared flat buffers unless "
            "use_orig_params is on: set fsdp_use_orig_params: true in the accelerate config, or use "
            "fsdp_version: 2 (training/configs/accelerate_fsdp.yaml)")


def place_unsharded_parts(pipe: Any, device: torch.device) -> None:
    """Under FSDP the pipeline loads on the CPU; the parts FSDP does not shard go to this process's GPU."""
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device)


@contextlib.contextmanager
def _fsdp1_full_params(accelerator: Any, model: torch.nn.Module, writeback: bool) -> Iterator[None]:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(model, writeback=writeback):
        yield


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (collective: every process calls it), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gather_full(accelerator: Any, model: torch.nn.Module, named: Sequence[tuple[str, torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
    """Full, detached *copies* of ``named`` tensors on the CPU (collective under FSDP): copies, so a later
    in-place change of the parameters (the EMA swapped back) does not change what was gathered."""
    if is_sharded(accelerator) and _fsdp_version(accelerator) == 1:
        with _fsdp1_full_params(accelerator, model, writeback=False):
            return {n: t.detach().to("cpu", copy=True) for n, t in named}
    return {n: full(t.detach()).to("cpu", copy=True) for n, t in named}


@torch.no_grad()
def load_full(target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full tensor into ``target``, which may be an FSDP2 shard (each process keeps its own part)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        target.copy_(distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements))
    else:
        target.copy_(value.to(target.device, target.dtype))


def load_full_parameters(accelerator: Any, model: torch.nn.Module, params: dict[str, torch.nn.Parameter],
                         values: dict[str, torch.Tensor]) -> None:
    """Copy full checkpoint tensors into the (possibly sharded) parameters of ``model``."""
    if is_sharded(accelerator) and _fsdp_version(accelerator) == 1:
        with _fsdp1_full_params(accelerator, model, writeback=True):
            for name, p in params.items():
                with torch.no_grad():
                    p.copy_(values[name].to(p.device, p.dtype))
        return
    for name, p in params.items():
        load_full(p, values[name])


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer


def optimizer_state(accelerator: Any, model: torch.nn.Module, optimizer: Any) -> dict:
    """The optimizer's state; under FSDP gathered whole and keyed by parameter name (collective)."""
    if not is_sharded(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, _inner(optimizer),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(accelerator: Any, model: torch.nn.Module, optimizer: Any, state: dict) -> None:
    if not is_sharded(accelerator):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, _inner(optimizer), optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def ema_state(ema: Any) -> dict:
    """The EMA's state (:class:`~..grpo.EMA`, diffusers ``EMAModel``) with full shadow tensors on the CPU
    (collective under FSDP2)."""
    state = {k: v for k, v in ema.model.state_dict().items() if k != "shadow_params"}
    state["shadow_params"] = [full(s.detach()).to("cpu", copy=True) for s in ema.shadow]
    return state


def load_ema_state(ema: Any, state: dict, updates: int = 0) -> None:
    """Restore :func:`ema_state` into ``ema`` (each process keeps its shard of the shadows). A checkpoint of
    the hand-written EMA before it (``decay`` and ``shadow``) counts its ``updates`` as averaged updates."""
    state = upgrade_ema_state(state, updates)
    shadows = state.get("shadow_params", ())
    if len(shadows) != len(ema.shadow):
        raise ValueError("EMA state does not match the trainable parameters")
    ema.model.load_state_dict({k: v for k, v in state.items() if k != "shadow_params"})  # decay, step count
    for shadow, value in zip(ema.shadow, shadows):
        load_full(shadow, value)


def nonfinite_names(named: Sequence[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of (possibly sharded) tensors holding NaN/inf: each process checks its shards, one all-reduce
    shares the answer, so every process stops together."""
    from torch.distributed.tensor import DTensor

    local = [t.to_local() if isinstance(t, DTensor) else t for _, t in named]
    flags = torch.tensor([0 if bool(torch.isfinite(t).all()) else 1 for t in local], dtype=torch.int64)
    if any(isinstance(t, DTensor) for _, t in named):
        device = local[0].device if local[0].device.type != "cpu" else torch.device("cpu")
        flags = flags.to(device)
        torch.distributed.all_reduce(flags)
    return [name for (name, _), flag in zip(named, flags.tolist()) if flag]
