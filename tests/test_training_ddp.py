"""Two-process DDP (torchrun, gloo on CPU): ranks sample different groups yet end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, sys, torch
torch.set_num_threads(1)
from emofeedback2.training.generator.config import load_config
from emofeedback2.training.generator.trainer import GRPOTrainer
trainer = GRPOTrainer(load_config(sys.argv[1]), log=False)
init = torch.cat([p.detach().flatten().clone() for _, p in trainer.trainable])
batch = trainer.sampler.sample(0, 2, 2, trainer.accelerator.process_index, trainer.accelerator.num_processes)
for _ in range(2):
    metrics = trainer.train_step()
acc = trainer.accelerator
flat = torch.cat([p.detach().flatten() for _, p in trainer.trainable])
everyone = acc.gather(flat.unsqueeze(0))
seeds = acc.gather(torch.tensor(batch.seeds).unsqueeze(0))
if acc.is_main_process:
    print(json.dumps({"ranks": acc.num_processes, "rank_diff": float((everyone[0] - everyone[1]).abs().max()),
                      "moved": float((flat - init).abs().max()), "ratio_dev": trainer.ratio_dev_before_first_update,
                      "shared_seeds": len(set(seeds[0].tolist()) & set(seeds[1].tolist()))}))
'''


def test_two_process_ddp_keeps_weights_in_sync(tiny_pipeline_dir, tmp_path):
    config = tmp_path / "ddp.toml"
    config.write_text(
        f'output_dir = "{tmp_path / "run"}"\nmax_steps = 2\ndevice = "cpu"\nprogress = false\nexport_at_end = false\n'
        f'[model]\npretrained = "{tiny_pipeline_dir}"\nlora_rank = 2\nlora_alpha = 4.0\nadapter_hidden = 8\n'
        '[sampling]\nsteps = 2\nresolution = 16\nguidance_scale = 1.0\n'
        '[grpo]\ngroup_size = 2\ngroups_per_step = 2\nbatch_size = 2\n[optim]\nlr = 1e-2\n[[rewards]]\nkind = "color"\n'
    )
    script = tmp_path / "ddp_check.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(config)], capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0 and "gloo" in proc.stderr.lower() and "not available" in proc.stderr.lower():
        pytest.skip("torch.distributed gloo backend not available here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report["ranks"] == 2 and report["shared_seeds"] == 0
    assert report["moved"] > 0 and report["rank_diff"] == 0.0  # gradients were all-reduced before each update
    assert report["ratio_dev"] < 1e-6
