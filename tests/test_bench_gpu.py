"""``emofeedback2 bench gpu``: the prepared GPU check runs end to end on tiny models on the CPU (the same code
path as on the GPU), prints its figures, survives a failing section and keeps to its budget; its real-size
path (real pipeline classes swapped in, shape-only text encoding) runs on shrunken configs."""

from __future__ import annotations

import argparse

import pytest
import torch

from emofeedback2.bench import gpu, gpu_grpo, gpu_sections


def _figures(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith(("[", " ")))


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gpu.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--tiny"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict[str, str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert gpu.run(_args()) == 0
    return _figures(out.getvalue())


def test_every_section_runs_on_tiny_models_and_prints_its_figures(tiny_run):
    f = tiny_run
    assert f["sections_done"] == "scorer,grpo,judge_train,fp16,family"
    assert not [k for k in f if k.endswith("_error")], f
    assert float(f["ev_over_prefill"]) > 0 and float(f["scorer_ev_images_per_s"]) > 0
    for prefix in ("grpo", "family"):
        for phase in ("rollout", "reward", "update"):
            assert float(f[f"{prefix}_{phase}_plan_gib"]) > 0  # the plan of the very config that ran
            assert f[f"{prefix}_{phase}_peak_gib"] == "n/a"  # no allocator statistics on the CPU
            assert float(f[f"{prefix}_{phase}_seconds"]) > 0  # each phase was entered
        assert float(f[f"{prefix}_seconds_per_step"]) > 0
    for objective in ("soft_label", "grpo"):
        assert float(f[f"judge_train_{objective}_seconds_per_step"]) > 0
        assert f[f"judge_train_{objective}_loss_finite"] == "1"


def test_the_forced_fp16_overflow_is_skipped_once_and_the_run_goes_on(tiny_run):
    f = tiny_run
    assert f["fp16_scaler"] == "GradScaler"
    assert f["fp16_skipped_updates"] == "1" and f["fp16_skipped_at_steps"] == f["fp16_forced_overflow_step"] == "1"
    assert f["fp16_steps_completed"] == "3" and f["fp16_weights_finite"] == "1"
    assert float(f["fp16_scale_after"]) < float(f["fp16_scale_before"])  # the scaler backed off


def test_the_judge_is_given_back_without_its_lora_after_judge_training(tmp_path):
    ctx = gpu.Context("cpu", True, gpu.Budget(600), str(tmp_path), gpu.Figures(), "flux.2-klein-4b")
    judge = gpu_sections.shared_judge(ctx)
    before = {n: p.detach().clone() for n, p in judge.model.named_parameters()}
    gpu_sections.judge_train_section(ctx)
    after = dict(judge.model.named_parameters())
    assert set(after) == set(before)  # no lora_A/lora_B left, no peft wrapper
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_failing_section_is_a_figure_and_the_next_section_still_runs(monkeypatch, capsys):
    def broken(ctx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    sections = tuple((name, broken if name == "scorer" else fn, r, t) for name, fn, r, t in gpu.SECTIONS)
    monkeypatch.setattr(gpu, "SECTIONS", sections)
    assert gpu.run(_args(sections="scorer,fp16")) == 0
    f = _figures(capsys.readouterr().out)
    assert f["scorer_oom"] == "1" and "OutOfMemoryError" in f["scorer_error"]
    assert f["sections_done"] == "fp16" and f["fp16_skipped_updates"] == "1"


def test_sections_that_do_not_fit_the_budget_are_skipped_and_named(capsys):
    assert gpu.run(_args(budget_s=1.0)) == 0
    f = _figures(capsys.readouterr().out)
    assert f["sections_done"] == "none"
    assert all(f[f"{name}_skipped"].startswith("budget") for name, *_ in gpu.SECTIONS)


def test_bad_requests_are_refused_before_anything_loads(capsys):
    assert gpu.run(_args(sections="scorer,nonsense")) == 2
    assert gpu.run(_args(tiny=False)) == 2  # real size on the CPU
    out = capsys.readouterr().out
    assert "unknown section" in out and "need a GPU" in out


@pytest.mark.parametrize("name", ["sd3.5-medium", "flux.2-klein-4b"])
def test_the_real_size_path_swaps_in_the_real_classes_and_encodes_real_shapes(name, tmp_path, monkeypatch):
    """The GPU run's own path — the real denoiser/VAE classes from ``PIPELINES``, shape-only text encoding,
    the recipe's plan — on configs shrunk to tiny widths, so it runs here."""
    from emofeedback2.bench.train_plan import REAL_PIPELINES
    from emofeedback2.training.generator import real_configs

    arch = gpu_grpo.REAL_GENERATORS[name][0]
    ctx = gpu.Context("cpu", False, gpu.Budget(600), str(tmp_path), gpu.Figures(), name)
    ctx.small_sizes = True
    tiny_pipe, _ = gpu_grpo._pipeline(gpu.Context("cpu", True, gpu.Budget(60), str(tmp_path / "t"),
                                                      gpu.Figures(), name), name)
    hub = REAL_PIPELINES[name]
    shrunk = {part: (lib, cls, dict(getattr(tiny_pipe, part).config))
              for part, (lib, cls, _) in real_configs.PIPELINES[hub].items() if part in ("transformer", "vae")}
    monkeypatch.setitem(real_configs.PIPELINES, hub, {**real_configs.PIPELINES[hub], **shrunk})
    monkeypatch.setattr(gpu_grpo, "_pipeline", _float32(gpu_grpo._pipeline))
    pipe, model_path = gpu_grpo._pipeline(ctx, name)
    assert model_path == hub
    assert type(pipe.transformer) is type(tiny_pipe.transformer)
    tokens = gpu_grpo.REAL_GENERATORS[name][2]
    context = pipe.encode_prompt(prompt=["a", "b"], device=torch.device("cpu"))[0]
    assert tuple(context.shape) == (2, tokens, pipe.transformer.config.joint_attention_dim)
    ctx.shared["judge"] = gpu_sections.shared_judge(gpu.Context("cpu", True, gpu.Budget(60), str(tmp_path / "j"),
                                                                gpu.Figures(), name))
    gpu_grpo._grpo_figures(ctx, "check", name, steps=1)
    assert float(ctx.emit.values["check_update_plan_gib"]) > 0 and ctx.emit.values["check_step0_seconds"]



def _float32(build):
    """The real-size path builds fp16 modules for a GPU; on the CPU this test keeps them in float32."""

    def wrapped(ctx, name):
        pipe, path = build(ctx, name)
        pipe.to(torch.float32)
        return pipe, path

    return wrapped


def test_phase_timing_is_attributed_to_the_phase_that_spent_it(tmp_path, monkeypatch, one_thread):
    """Negative control for the per-phase figures: a reward that takes a known extra time must move the reward
    phase's seconds by exactly that time, and neither the rollout's (which calls the reward inline) nor the
    update's. The bench's clock is a fake one that only the delay advances, so the check is exact, not timed."""
    from types import SimpleNamespace

    from emofeedback2.training.generator.rewards import CompositeReward

    clock = [0.0]
    monkeypatch.setattr(gpu_grpo, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    original = CompositeReward.score_parts
    delay, calls = 0.0, []

    def slowed(self, *args, **kwargs):
        calls.append(1)
        clock[0] += delay
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CompositeReward, "score_parts", slowed)

    def phase_seconds(folder) -> dict[str, float]:
        ctx = gpu.Context("cpu", True, gpu.Budget(600), str(folder), gpu.Figures(), "sd3.5-medium")
        gpu_grpo._grpo_figures(ctx, "g", "sd3.5-medium", steps=2)
        return {p: float(ctx.emit.values[f"g_{p}_seconds"]) for p in ("rollout", "reward", "update")}

    plain = phase_seconds(tmp_path / "plain")
    assert plain == {"rollout": 0.0, "reward": 0.0, "update": 0.0}
    delay, calls = 7.0, []
    slowed_run = phase_seconds(tmp_path / "slowed")
    assert len(calls) >= 2
    assert slowed_run == {"rollout": 0.0, "reward": pytest.approx(delay * len(calls)), "update": 0.0}
