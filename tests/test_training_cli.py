"""CLI (train, export), rewards (CLIP quality from a folder, composite, async) and the train benchmark."""

from __future__ import annotations

import argparse

import pytest
import torch

from emofeedback2.cli import main
from emofeedback2.training.generator.config import ConfigError
from emofeedback2.training.generator.rewards import (
    AsyncRewardRunner,
    BrightnessReward,
    CLIPQualityReward,
    ColorVAReward,
    CompositeReward,
)


# Tiny models run fastest single-threaded on a shared machine (no oversubscription).
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from emofeedback2.tiny_models.diffusion import write_tiny_clip_tokenizer

    tok_dir = write_tiny_clip_tokenizer(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    config = CLIPConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=30, patch_size=10),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(folder / "clip"))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30},
                                                                 crop_size={"height": 30, "width": 30}),
                              tokenizer=tokenizer)
    processor.save_pretrained(str(folder / "clip"))
    return folder / "clip"


def test_clip_quality_reward_loads_from_a_folder_and_scores(tmp_path):
    path = _tiny_clip(tmp_path)
    reward = CLIPQualityReward(str(path))
    images = torch.rand(3, 32, 32, 3)
    scores = reward(images, ["a cat", "a dog", "a lake"], torch.zeros(3, 2))
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert not torch.allclose(scores, scores[0].expand(3))
    assert torch.equal(scores, reward(images, ["a cat", "a dog", "a lake"], torch.zeros(3, 2)))
    offloaded = CLIPQualityReward(str(path), offload=True)
    torch.testing.assert_close(offloaded(images, ["a cat", "a dog", "a lake"], torch.zeros(3, 2)), scores)
    with pytest.raises(FileNotFoundError, match="CLIP model"):
        CLIPQualityReward(str(tmp_path / "missing"))


def test_composite_reward_weights_normalisation_and_async_order():
    bright = torch.cat([torch.full((2, 8, 8, 3), 0.9), torch.full((2, 8, 8, 3), 0.1)])
    targets = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [3.0, 0.0], [-3.0, 0.0]])
    with pytest.raises(ConfigError, match="same normalize"):  # weights on two scales mean nothing
        CompositeReward([BrightnessReward(), ColorVAReward()], [1.0, 0.5], ["none", "batch"])
    composite = CompositeReward([BrightnessReward(), ColorVAReward()], [1.0, 0.5], ["batch", "batch"])
    parts = composite.score_parts(bright, ["p"] * 4, targets)
    assert parts["brightness"][0] > parts["brightness"][1] and parts["brightness"][3] > parts["brightness"][2]
    total = composite.combine(parts)

    def z(v):
        return (v - v.mean()) / (v.std(unbiased=False) + 1e-6)

    torch.testing.assert_close(total, z(parts["brightness"]) + 0.5 * z(parts["color_va"]))
    runner = AsyncRewardRunner(composite, workers=2)
    for i in range(4):
        runner.submit(bright[i:i + 1], ["p"], targets[i:i + 1])
    collected = runner.collect()
    runner.close()
    torch.testing.assert_close(collected["brightness"], parts["brightness"])


def test_train_and_export_commands(tiny_pipeline_dir, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(
        f'output_dir = "{tmp_path / "run"}"\nmax_steps = 2\nsave_every = 1\ndevice = "cpu"\nprogress = false\n'
        f'[model]\npretrained = "{tiny_pipeline_dir}"\nlora_rank = 2\nlora_alpha = 4.0\nadapter_hidden = 8\n'
        '[sampling]\nsteps = 2\nresolution = 16\nguidance_scale = 1.0\n'
        '[grpo]\ngroup_size = 2\ngroups_per_step = 2\nbatch_size = 2\n[[rewards]]\nkind = "color"\n'
    )
    assert main(["train", "--config", str(config), "--dry-run", "--set", "grpo.batch_size=4"]) == 0
    assert "samples/step=4" in capsys.readouterr().out
    assert main(["train", "--config", str(config), "--set", "grpo.batch_size=3"]) == 2
    assert "must divide" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--max-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "samples/step=4" in out and "done: step 1" in out
    assert main(["train", "--config", str(config), "--resume"]) == 0
    assert "resumed at step 1" in capsys.readouterr().out
    run = tmp_path / "run"
    assert (run / "export" / "emofeedback2_lora.safetensors").is_file()
    assert (run / "export" / "emotion_adapter.safetensors").is_file()
    assert any((run / "tb").iterdir())
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "diffusers_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x")]) == 2


def test_bench_train_tiny_and_real_size_code_path(capsys):
    from emofeedback2.bench import train as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--steps", "2", "4", "--repeats", "1", "--group-size", "2",
                                        "--batch-size", "2", "--resolution", "16"])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("update_mem_ratio_T4_T2=")
    assert lines[-2].startswith("whole_graph_mem_ratio_T4_T2=") and float(lines[-2].split("=")[1]) > 1.5
    assert 0.9 < float(lines[-1].split("=")[1]) < 1.1  # per-timestep backward: flat in T
    assert "images/s" in lines[1]
    # the real-size SD3.5-Medium path, shrunk to toy widths (the real one needs a GPU)
    tiny = '{"transformer": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8, ' \
           '"caption_projection_dim": 16, "joint_attention_dim": 32, "pooled_projection_dim": 16, ' \
           '"dual_attention_layers": [0], "sample_size": 8, "pos_embed_max_size": 16}, ' \
           '"vae": {"block_out_channels": [32, 32], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], ' \
           '"up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": 1}}'
    assert bench.run(parser.parse_args(["--real-size", "sd3.5-medium", "--steps", "1", "2", "--repeats", "1",
                                        "--group-size", "2", "--batch-size", "2", "--resolution", "16",
                                        "--lora-rank", "2", "--size-override", tiny])) == 0
    out = capsys.readouterr().out
    assert "random prompt-embedding tensors" in out and "update_mem_ratio" in out.strip().splitlines()[-1]


def test_lvlm_reward_through_build_reward(tiny_lvlm_dir):
    from emofeedback2.training.generator.config import RewardSpec
    from emofeedback2.training.generator.rewards import build_reward

    reward = build_reward([RewardSpec(kind="lvlm", path=str(tiny_lvlm_dir), device="cpu"), RewardSpec(kind="color")])
    assert reward.names == ["lvlm_va", "color_va"]
    parts = reward.score_parts(torch.rand(2, 32, 32, 3), ["a", "b"], torch.tensor([[3.0, 3.0], [-3.0, -3.0]]))
    assert all(((v >= 0) & (v <= 1)).all() for v in parts.values())


def test_bench_train_frees_each_run_before_measuring_the_next(monkeypatch, capsys):
    # Peak-memory figures per T are only honest if the previous T's model is gone by then.
    import gc
    import weakref

    from emofeedback2.bench import train as bench
    from emofeedback2.training.generator import trainer as trainer_module

    alive_at_construction = []
    previous: list[weakref.ref] = []

    class Recording(trainer_module.GRPOTrainer):
        def __init__(self, *args, **kwargs):
            gc.collect()
            alive_at_construction.append(any(ref() is not None for ref in previous))
            super().__init__(*args, **kwargs)
            previous.append(weakref.ref(self))

    monkeypatch.setattr(trainer_module, "GRPOTrainer", Recording)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--steps", "2", "3", "--repeats", "1", "--group-size", "2",
                                        "--batch-size", "2", "--resolution", "16"])) == 0
    assert alive_at_construction == [False, False]
