"""A quantised frozen base under the LoRA (model.quantization): validation, plan arithmetic, a real torchao run on CPU."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.training.generator import memory_plan as mp
from emofeedback2.training.generator.config import ConfigError, validate
from emofeedback2.training.generator.trainer import GRPOTrainer

from test_training_trainer import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(folder, tmp_path, quantization="8bit", backend="torchao"):
    c = tiny_config(folder, tmp_path / "run")
    c.model.quantization, c.model.quantization_backend = quantization, backend
    return c


@pytest.mark.parametrize("quantization,backend,device,fix", [
    ("8bit", "bitsandbytes", "cpu", 'quantization_backend = "torchao"'),
    ("4bit", "bitsandbytes", "cpu", 'quantization_backend = "torchao"'),
    ("4bit", "torchao", "cpu", 'quantization = "8bit"'),
    ("int8", "torchao", "cpu", "none, 8bit, 4bit"),
    ("8bit", "quanto", "cpu", "bitsandbytes, torchao"),
])
def test_impossible_quantised_bases_are_refused_with_the_fix(tiny_pipeline_dirs, tmp_path, quantization, backend,
                                                             device, fix):
    c = _config(tiny_pipeline_dirs["sd3"], tmp_path, quantization, backend)
    c.device = device
    with pytest.raises(ConfigError, match=fix.replace("(", r"\(")):
        validate(c)


def test_bitsandbytes_on_a_cpu_only_run_is_refused_before_loading(tiny_pipeline_dirs, tmp_path, monkeypatch):
    """device = "auto" validates (a GPU box would be fine); the trainer refuses the CPU it got."""
    c = _config(tiny_pipeline_dirs["sd3"], tmp_path, "4bit", "bitsandbytes")
    c.device = "auto"
    validate(c)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import emofeedback2.engines.generation.diffusers_backend as backend

    monkeypatch.setattr(backend, "load_pipeline", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        GRPOTrainer(c, log=False)


@pytest.mark.parametrize("quantization,per_weight", [("none", 4.0), ("8bit", 1.0), ("4bit", 0.5)])
def test_plan_counts_the_quantised_base(tiny_pipeline_dirs, tmp_path, quantization, per_weight):
    c = _config(tiny_pipeline_dirs["sd3"], tmp_path, quantization, "bitsandbytes")
    c.device = "auto"  # bitsandbytes validates for a GPU run; the plan is arithmetic and needs no GPU
    plan = mp.plan_training(c)
    denoiser = mp.pipeline_components(c.model.pretrained)["transformer"]
    linear = sum(m.weight.numel() for m in denoiser.modules() if isinstance(m, torch.nn.Linear))
    rows = sum(m.weight.shape[0] for m in denoiser.modules() if isinstance(m, torch.nn.Linear))
    other = mp.count_params(denoiser) - linear
    scales = {"none": 0, "8bit": 4 * rows, "4bit": 4 * -(-linear // 64)}[quantization]
    assert plan.component("transformer").bytes == int(linear * per_weight) + scales + other * 4


def _stored_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's frozen weights really occupy (torchao's int8 data + its per-row scales)."""
    total = 0
    for name, p in module.named_parameters():
        if "lora_" in name:
            continue
        parts = (p.qdata, p.scale) if hasattr(p, "qdata") else (p,)
        total += sum(t.numel() * t.element_size() for t in parts)
    return total


def test_torchao_int8_base_trains_the_lora_on_cpu(tiny_pipeline_dirs, tmp_path):
    pytest.importorskip("torchao")
    c = _config(tiny_pipeline_dirs["sd3"], tmp_path)
    plan = mp.plan_training(c)
    trainer = GRPOTrainer(c, log=False)
    transformer = trainer.pipe.transformer
    weight = transformer.transformer_blocks[0].attn.to_q.base_layer.weight
    assert type(weight).__name__ == "Int8Tensor" and weight.qdata.dtype == torch.int8
    assert plan.component("transformer").bytes == _stored_bytes(transformer)  # the plan's 8-bit layout, exactly
    frozen = weight.qdata.clone()
    lora = torch.cat([p.detach().flatten().clone() for _, p in trainer.trainable])
    for _ in range(2):
        metrics = trainer.train_step()
    assert trainer.ratio_dev_before_first_update < 1e-6 and metrics["train/grad_norm"] > 0
    assert torch.equal(weight.qdata, frozen)  # the quantised base never moves
    moved = torch.cat([p.detach().flatten() for _, p in trainer.trainable])
    assert (moved - lora).abs().max() > 0
