"""Output folders are never mixed or overwritten silently (demo/loop --out, export --out), and the
bench options that could print a meaningless headline (one T, an unknown real size) are refused."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest
import torch

from emofeedback2.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# --- demo / loop --out --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory, tiny_pipeline_dir):
    root = tmp_path_factory.mktemp("demo_models")
    (root / "tiny-sd15").symlink_to(tiny_pipeline_dir, target_is_directory=True)
    return root


def _demo(out, models, rounds: int, *extra: str) -> int:
    return main(["demo", "--out", str(out), "--rounds", str(rounds), "--candidates", "2", "--size", "16", "--steps", "1",
                 "--tolerance", "0", "--workdir", str(models), *extra])


def test_demo_refuses_an_earlier_run_and_overwrite_replaces_it_whole(tmp_path, demo_models, capsys):
    out = tmp_path / "out"
    assert _demo(out, demo_models, 2) == 0
    assert (out / "round_02").is_dir()
    report = (out / "report.json").read_bytes()
    capsys.readouterr()
    # a shorter run over it would leave round_02 of the old run beside the new report
    assert _demo(out, demo_models, 1) == 2
    _one_line_error(capsys, "not empty", "--overwrite")
    assert (out / "report.json").read_bytes() == report and (out / "round_02").is_dir()

    assert _demo(out, demo_models, 1, "--overwrite") == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["best.png", "report.json", "round_01", "trajectory.png"]
    assert len(json.loads((out / "report.json").read_text())["rounds"]) == 1


@pytest.mark.parametrize("foreign", ["notes.txt", "round_01/mine.txt", "models/"])
def test_overwrite_removes_nothing_when_the_folder_holds_other_files(tmp_path, demo_models, foreign, capsys):
    out = tmp_path / "out"
    assert _demo(out, demo_models, 1) == 0
    target = out / foreign
    target.mkdir() if foreign.endswith("/") else target.write_text("keep me")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    assert _demo(out, demo_models, 1, "--overwrite") == 2
    _one_line_error(capsys, "does not write", foreign.split("/")[0])
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_overwrite_never_follows_a_link(tmp_path, demo_models, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "candidate_00_seed0.png").write_bytes(b"not ours")
    out = tmp_path / "out"
    out.mkdir()
    (out / "round_01").symlink_to(elsewhere, target_is_directory=True)
    assert _demo(out, demo_models, 1, "--overwrite") == 2
    _one_line_error(capsys, "round_01")
    assert (elsewhere / "candidate_00_seed0.png").read_bytes() == b"not ours"


def test_loop_refuses_a_non_empty_out_before_loading_anything(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    code = main(["loop", "--generator", str(tmp_path / "no-model"), "--lvlm", "colour", "--prompt", "a cat",
                 "--valence", "1", "--arousal", "0", "--out", str(out)])
    assert code == 2
    _one_line_error(capsys, "--overwrite")  # not the missing --generator: the folder is checked first


def test_demo_defaults_are_the_demo_target():
    from emofeedback2.cli import build_parser
    from emofeedback2.engines.demo.toy_demo import DEMO_TARGET

    args = build_parser().parse_args(["demo"])
    assert (args.valence, args.arousal) == (DEMO_TARGET.valence, DEMO_TARGET.arousal)
    assert (args.cfg, build_parser().parse_args(["loop", "--generator", "g", "--lvlm", "colour", "--valence", "0",
                                                 "--arousal", "0"]).cfg) == (1.0, 7.0)


# --- export --out -------------------------------------------------------------------------------------


def _checkpoint(root, adapter: bool):
    """A real checkpoint (hashes, ``latest``) holding a one-layer SD1.5 LoRA and optionally an emotion adapter."""
    from emofeedback2.engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig
    from emofeedback2.training.checkpoint import save_checkpoint

    module = "denoiser.down_blocks.0.attentions.0.proj_in"
    weights = {f"{module}.lora_A.weight": torch.randn(2, 8), f"{module}.lora_B.weight": torch.zeros(8, 2)}
    meta = {"config": {"model": {"lora_rank": 2, "lora_alpha": 2.0}}, "arch": "sd15"}
    if adapter:
        config = EmotionAdapterConfig.for_arch("sd15")
        weights.update({f"adapter.{k}": v for k, v in EmotionAdapter(config).state_dict().items()})
        meta["adapter_config"] = dataclasses.asdict(config)
    return save_checkpoint(root / "checkpoints", 1, weights, {}, meta)


def _export(checkpoint, out, *extra: str) -> int:
    return main(["export", "--checkpoint", str(checkpoint), "--out", str(out), *extra])


def test_export_names_are_the_exporters():
    from emofeedback2.cli.export_commands import EXPORT_NAMES
    from emofeedback2.training.generator.export import ADAPTER_FILE, DIFFUSERS_DIR, KOHYA_FILE

    assert EXPORT_NAMES == (KOHYA_FILE, DIFFUSERS_DIR, ADAPTER_FILE)


def test_export_refuses_an_earlier_export_and_overwrite_leaves_no_stale_file(tmp_path, capsys):
    with_adapter, without = tmp_path / "run_a", tmp_path / "run_b"
    _checkpoint(with_adapter, adapter=True)
    _checkpoint(without, adapter=False)
    out = tmp_path / "export"
    assert _export(with_adapter, out) == 0
    lora = (out / "emofeedback2_lora.safetensors").read_bytes()
    capsys.readouterr()
    assert _export(without, out) == 2
    _one_line_error(capsys, "not empty", "--overwrite")
    assert (out / "emofeedback2_lora.safetensors").read_bytes() == lora

    assert _export(without, out, "--overwrite") == 0
    # the adapter of the old export must not pass for the new checkpoint's
    assert sorted(p.name for p in out.iterdir()) == ["diffusers_lora", "emofeedback2_lora.safetensors"]
    assert (out / "emofeedback2_lora.safetensors").read_bytes() != lora


def test_a_failed_overwrite_keeps_the_previous_export(tmp_path, capsys):
    from emofeedback2.training.checkpoint import META

    step = _checkpoint(tmp_path / "run", adapter=True)
    out = tmp_path / "export"
    assert _export(step, out) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (step / META).write_text((step / META).read_text().replace('"lora_alpha": 2.0', '"lora_alpha": 9.0'))
    capsys.readouterr()
    assert _export(step, out, "--overwrite") == 2
    _one_line_error(capsys, "sha256")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("where", ["step", "step/sub", "checkpoints/sub", "run", "foreign"])
def test_export_never_writes_into_a_checkpoint_or_over_other_files(tmp_path, where, capsys):
    step = _checkpoint(tmp_path / "run", adapter=False)
    out = {"step": step, "step/sub": step / "sub", "checkpoints/sub": step.parent / "sub", "run": tmp_path / "run",
           "foreign": tmp_path / "mine"}[where]
    if where == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    before = sorted(tmp_path.rglob("*"))
    assert _export(step, out, "--overwrite") == 2  # even with --overwrite
    _one_line_error(capsys, "checkpoint folder" if "step" in where or "checkpoints" in where else "does not write")
    assert sorted(tmp_path.rglob("*")) == before


# --- bench options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, valid", [
    (["bench", "scorer", "--real-size", "nosuch"], "qwen2.5-vl-7b"),
    (["bench", "train", "--real-size", "nosuch"], "sd3.5-medium"),
    (["bench", "train", "--judge-real-size", "nosuch"], "qwen2.5-vl-7b"),
])
def test_an_unknown_real_size_is_refused_naming_the_valid_ones(argv, valid, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and valid in err and "Traceback" not in err


def test_bench_scorer_real_sizes_are_the_ones_that_build():
    from emofeedback2.bench.scorer import REAL_SIZES
    from emofeedback2.tiny_models.lvlm import real_size_config

    for name in REAL_SIZES:
        assert real_size_config(name).text_config.hidden_size > 1000
    with pytest.raises(ValueError, match="available"):
        real_size_config("nosuch")


@pytest.mark.parametrize("steps", [["4"], ["4", "4"]])
def test_bench_train_needs_two_different_step_counts(steps, capsys):
    assert main(["bench", "train", "--steps", *steps]) == 2
    _one_line_error(capsys, "--steps needs at least two different step counts")


def test_bench_train_lora_rank_sets_the_trained_lora_size(capsys):
    from emofeedback2.bench import train as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    small = ["--steps", "1", "2", "--repeats", "1", "--group-size", "2", "--batch-size", "2", "--resolution", "16"]
    counts = {}
    for extra in ([], ["--lora-rank", "2"]):
        assert bench.run(parser.parse_args(small + extra)) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[-1].startswith("update_mem_ratio_T2_T1=")
        rank, count = re.fullmatch(r"LoRA rank (\d+): (\d+) trainable LoRA parameters.*", lines[-3]).groups()
        counts[int(rank)] = int(count)
    assert set(counts) == {4, 2}  # 4 is the tiny model's default
    assert counts[4] == 2 * counts[2] > 0  # LoRA parameters grow linearly with the rank


def test_score_json_names_the_judge_its_options_and_the_versions(tmp_path, capsys):
    from importlib import metadata

    from PIL import Image

    Image.new("RGB", (16, 16), (200, 120, 40)).save(tmp_path / "a.png")
    assert main(["score", str(tmp_path / "a.png"), "--lvlm", "colour", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["models"]["lvlm"] == "colour" and printed["models"]["lvlm_adapter"] is None
    assert printed["models"]["quantization"] == "none" and "attn_implementation" in printed["models"]
    assert printed["seed"] is None  # scoring draws nothing at random
    assert printed["versions"]["torch"] == metadata.version("torch")
    assert printed["versions"]["transformers"] == metadata.version("transformers")
