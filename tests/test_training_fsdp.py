"""Two-process FSDP (accelerate's FSDP2 on CPU with gloo): the sharded trainer learns what DDP learns.

accelerate switches to FSDP only on GPU-type machines, so the script below sets its state to FSDP by
hand after building an ``Accelerator`` with an FSDP2 plugin (FSDP2 itself runs on CPU with gloo);
everything after that is the trainer's own code path: accelerate shards the policy, the LoRA trains
on the frozen, sharded base, checkpoints and exports gather full tensors, and a resume re-shards them.
The same config under DDP gives the reference weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Families with a tiny pipeline the fixtures build; the lead adds the issue 23 families after the merge.
ARCHES = ["sd3"]

SCRIPT = r'''
import json, sys, torch
torch.set_num_threads(1)
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor
from emofeedback2.training.generator.config import load_config
from emofeedback2.training.generator.trainer import GRPOTrainer
from emofeedback2.training.generator import sharding

config_path, mode = sys.argv[1], sys.argv[2]
if mode == "fsdp":
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            state_dict_type="FULL_STATE_DICT")
    acc = Accelerator(cpu=True, fsdp_plugin=plugin)
    acc.state.distributed_type = DistributedType.FSDP  # accelerate enables FSDP on GPUs only; FSDP2 runs on CPU
    acc.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
else:
    acc = Accelerator(cpu=True)
trainer = GRPOTrainer(load_config(config_path), accelerator=acc, log=False)
sharded = sum(isinstance(p, DTensor) for _, p in trainer.trainable)
local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for _, p in trainer.trainable)
total = sum(p.numel() for _, p in trainer.trainable)
frozen = [p for n, p in trainer.raw_net.named_parameters() if not p.requires_grad]
frozen_sharded = sum(isinstance(p, DTensor) for p in frozen)
blocks = trainer.raw_net._no_split_modules  # the denoiser's blocks: one FSDP unit each
units = [m for m in trainer.raw_net.modules() if type(m).__name__.removeprefix("FSDP") in blocks]
wrapped = sum(type(m).__name__.startswith("FSDP") for m in units)
trainer.train(overwrite=True)
ratio_dev = trainer.ratio_dev_before_first_update
# exact resume: from the step-1 checkpoint, one more step must give the step-2 weights
root = trainer.checkpoint_root()
resumed = GRPOTrainer(load_config(config_path), accelerator=acc, log=False)
resumed.resume(root / "step-000001")
resumed.train_step()
now = sharding.gather_full(acc, resumed.net, resumed.trainable)
if acc.is_main_process:
    saved = load_file(str(root / "step-000002" / "trainable.safetensors"))
    first = load_file(str(root / "step-000001" / "trainable.safetensors"))
    print(json.dumps({
        "ranks": acc.num_processes, "sharded": sharded, "trainable": len(trainer.trainable),
        "local_fraction": local / total, "frozen_sharded": frozen_sharded, "frozen": len(frozen),
        "units": len(units), "wrapped": wrapped, "ratio_dev": ratio_dev,
        "moved": max(float((saved[k] - first[k]).abs().max()) for k in first),
        "resume_diff": max(float((now[k] - saved[k]).abs().max()) for k in now),
        "full_shapes": all(tuple(saved[n].shape) == tuple(p.shape) for n, p in trainer.trainable)}))
'''


def _run(script, config, mode, env):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(config), mode], capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0 and "gloo" in proc.stderr.lower() and "not available" in proc.stderr.lower():
        pytest.skip("torch.distributed gloo backend not available here")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHES)
def test_fsdp_shards_the_policy_and_learns_what_ddp_learns(tiny_pipeline_dirs, tmp_path, arch):
    from safetensors.torch import load_file

    script = tmp_path / "fsdp_check.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    reports, exports = {}, {}
    for mode in ("fsdp", "ddp"):
        config = tmp_path / f"{mode}.toml"
        config.write_text(
            f'output_dir = "{tmp_path / mode}"\nmax_steps = 2\nsave_every = 1\ndevice = "cpu"\nprogress = false\n'
            f'[model]\npretrained = "{tiny_pipeline_dirs[arch]}"\nlora_rank = 2\nlora_alpha = 4.0\nadapter_hidden = 8\n'
            '[sampling]\nsteps = 2\nresolution = 16\nguidance_scale = 1.0\n'
            '[grpo]\ngroup_size = 2\ngroups_per_step = 2\nbatch_size = 2\n[optim]\nlr = 1e-2\nema = true\n'
            '[[rewards]]\nkind = "color"\n')
        reports[mode] = _run(script, config, mode, env)
        exports[mode] = {name: load_file(str(tmp_path / mode / "export" / name))
                         for name in ("emofeedback2_lora.safetensors", "emotion_adapter.safetensors")}
    fsdp, ddp = reports["fsdp"], reports["ddp"]
    assert fsdp["ranks"] == 2 and fsdp["sharded"] == fsdp["trainable"] > 0  # every trainable tensor is a shard
    assert 0.4 < fsdp["local_fraction"] < 0.6 and ddp["local_fraction"] == 1.0  # half of it on each process
    assert fsdp["frozen_sharded"] == fsdp["frozen"] > 0  # the frozen base is sharded too
    assert fsdp["wrapped"] == fsdp["units"] > 0 and ddp["wrapped"] == 0  # one shard unit per denoiser block
    assert fsdp["ratio_dev"] < 1e-6 and fsdp["moved"] > 1e-3
    assert fsdp["full_shapes"]  # the checkpoint holds gathered, full tensors
    assert fsdp["resume_diff"] == 0.0 and ddp["resume_diff"] == 0.0  # exact resume from re-sharded state
    for name, tensors in exports["fsdp"].items():  # same weights (EMA) as DDP up to reduction order
        reference = exports["ddp"][name]
        assert tensors.keys() == reference.keys()
        assert max(float((tensors[k].float() - reference[k].float()).abs().max()) for k in tensors) < 1e-5


def test_shipped_fsdp_config_is_an_fsdp2_accelerate_config():
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    path = Path(__file__).resolve().parents[1] / "training" / "configs" / "accelerate_fsdp.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == DistributedType.FSDP and config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config  # the policy names its blocks


def test_fsdp1_without_orig_params_is_refused_with_the_fix():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from emofeedback2.training.config_fields import ConfigError
    from emofeedback2.training.generator.sharding import check_sharding

    def accelerator(version, orig):
        plugin = SimpleNamespace(fsdp_version=version, use_orig_params=orig)
        return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))

    with pytest.raises(ConfigError, match="fsdp_use_orig_params: true"):
        check_sharding(accelerator(1, False))
    check_sharding(accelerator(1, True))
    check_sharding(accelerator(2, False))
    quantised = SimpleNamespace(quantization="4bit")
    with pytest.raises(ConfigError, match="model.quantization=none"):
        check_sharding(accelerator(2, False), quantised)
