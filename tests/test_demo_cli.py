"""The command line: `emofeedback2 demo` end to end (smallest settings) and argument errors."""

import json
import logging

import pytest
from PIL import Image

from emofeedback2.cli import main


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_pipeline_dir):
    """A demo work folder holding the session's tiny SD1.5 pipeline (the demo reuses what it finds)."""
    root = tmp_path_factory.mktemp("demo_models")
    (root / "tiny-sd15").symlink_to(tiny_pipeline_dir, target_is_directory=True)
    return root


def test_demo_writes_best_trajectory_and_report(tmp_path, models_dir, capsys):
    out = tmp_path / "demo_out"
    code = main(["demo", "--out", str(out), "--rounds", "2", "--candidates", "2", "--size", "16", "--steps", "1",
                 "--workdir", str(models_dir)])
    assert code == 0
    for name in ("best.png", "trajectory.png", "report.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "best.png").size == (16, 16)
    assert Image.open(out / "trajectory.png").size == (512, 512)
    report = json.loads((out / "report.json").read_text())
    assert report["demo"] is True and "untrained" in report["note"]
    assert report["counts"]["generator_images"] == 2 * len(report["rounds"]) >= 2
    assert report["counts"]["image_evaluations"] >= 2 and report["timings"]["total"] > 0
    assert report["components"]["scorer_is_heuristic"] is True
    printed = capsys.readouterr().out
    assert "untrained" in printed and "best.png" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--valence", "3.5"], "outside [-3, 3]"),
        (["demo", "--arousal", "calm"], "arousal must be a number"),
        (["demo", "--size", "20"], "multiple of 8"),
        (["demo", "--rounds", "0"], "rounds must be in"),
        (["demo", "--tolerance", "9"], "tolerance"),
        (["loop", "--lvlm", "colour", "--prompt", "a cat", "--valence", "1", "--arousal", "0"], "--generator"),
    ],
)
def test_bad_arguments_get_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_loop_names_the_missing_model(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    code = main(["loop", "--generator", str(missing), "--lvlm", "colour", "--prompt", "a cat", "--valence", "1",
                 "--arousal", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and "--generator" in err and "--model" not in err
    assert len(err.strip().splitlines()) == 1


def test_loop_runs_on_a_local_pipeline_folder(tmp_path, models_dir, capsys):
    out = tmp_path / "loop_out"
    code = main(["loop", "--generator", str(models_dir / "tiny-sd15"), "--lvlm", "colour", "--prompt", "a cat on a sofa",
                 "--valence", "-1.5", "--arousal", "0.5", "--rounds", "1", "--candidates", "2", "--size", "16",
                 "--steps", "1", "--cfg", "1.0", "--device", "cpu", "--dtype", "float32", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["demo"] is False and report["target"] == {"valence": -1.5, "arousal": 0.5}
    assert (out / "best.png").is_file() and (out / "trajectory.png").is_file()


def test_cli_defaults_are_the_loop_engine_defaults():
    from emofeedback2.cli.loop_commands import LOOP_DEFAULTS
    from emofeedback2.engines.loop.loop_config import LoopConfig

    config = LoopConfig()
    for name, value in vars(LOOP_DEFAULTS).items():
        assert getattr(config, name) == value, name


def test_loop_refuses_an_adapter_made_for_another_architecture(tmp_path, models_dir, capsys):
    from emofeedback2.engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig, save_emotion_adapter

    adapter_file = tmp_path / "sdxl_adapter.safetensors"
    save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig.for_arch("sdxl")), adapter_file)
    code = main(["loop", "--generator", str(models_dir / "tiny-sd15"), "--adapter", str(adapter_file), "--lvlm", "colour",
                 "--prompt", "a cat", "--valence", "1", "--arousal", "0", "--out", str(tmp_path / "o")])
    message = capsys.readouterr().err
    assert code == 2 and "--adapter" in message and "sdxl" in message


def test_loop_report_names_every_model_version_and_seed_and_truncation_is_one_note(tmp_path, models_dir, capfd):
    """What a newcomer could not find in report.json, and the console flood of CLIP truncation warnings."""
    from importlib import metadata

    from emofeedback2.engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig, save_emotion_adapter

    adapter_file = tmp_path / "identity_tiny_sd15.safetensors"  # the tiny pipeline's text context is 32 wide
    save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig(arch="sd15", context_dim=32, hidden_dim=8)), adapter_file)
    out = tmp_path / "loop_out"
    shown = []  # what diffusers' console handler would print (its stream is bound before capture starts)

    class Collect(logging.Handler):
        def emit(self, record):
            shown.append(record.getMessage())

    collect = Collect()
    library = logging.getLogger("diffusers")
    level = library.level  # the demo (run earlier in this process) turns library warnings off
    library.setLevel(logging.WARNING)
    library.addHandler(collect)
    try:
        code = main(["loop", "--generator", str(models_dir / "tiny-sd15"), "--adapter", str(adapter_file),
                     "--lvlm", "colour", "--prompt", "a lighthouse on a rocky coast", "--valence", "2", "--arousal", "1",
                     "--rounds", "2", "--candidates", "2", "--size", "16", "--steps", "1", "--seed", "7",
                     "--device", "cpu", "--out", str(out)])
    finally:
        library.removeHandler(collect)
        library.setLevel(level)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == {"generator": str(models_dir / "tiny-sd15"), "arch": "sd15", "lora": None,
                                "adapter": str(adapter_file), "lvlm": "colour", "lvlm_adapter": None, "device": "cpu",
                                "dtype": "auto", "attn_implementation": None, "quantization": "none"}
    assert report["seed"] == 7 and report["config"]["seed"] == 7
    for package in ("torch", "diffusers", "transformers", "peft"):
        assert report["versions"][package] == metadata.version(package), package
    assert report["versions"]["emofeedback2"]
    printed = capfd.readouterr()
    console = printed.out + printed.err
    # the tiny tokenizer splits words finer than CLIP's, so the loop's prompts overflow it here
    assert report["prompt_truncations"] > 0
    assert not [m for m in shown if "can only handle sequences" in m]
    assert console.count("the text encoder truncated") == 1
