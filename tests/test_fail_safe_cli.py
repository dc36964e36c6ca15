"""One error path for every command: bad input ends with one line naming the fix and exit code 2; help
texts, --version, --debug; images scaled and size-checked alike; loop/demo outputs written as they happen."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from fixtures_diffusion import small_train_toml
from emofeedback2.cli import build_parser, main
from emofeedback2.engines.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_pipeline_dir):
    root = tmp_path_factory.mktemp("bad_inputs")
    Image.new("RGB", (32, 32), (200, 40, 10)).save(root / "ok.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "afile").write_text("x")
    (root / "bad.safetensors").write_bytes(b"\xff" * 40)
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "pytag.yaml").write_text('model: !!python/object/apply:os.system ["echo hi"]\n')
    (root / "bad.toml").write_text("[model\n")
    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (root / "badrow.csv").write_text("valence,arousal\n1,abc\n")
    config = root / "c.toml"
    config.write_text(small_train_toml(root / "run", tiny_pipeline_dir))
    return {"root": root, "config": config, "pipe": tiny_pipeline_dir}


def _cases():
    # (argv with {root}/{config}/{pipe} placeholders, text the one-line message must contain)
    train = ["train", "--config", "{config}", "--dry-run"]
    return [
        (["score", "{root}/missing.png", "--lvlm", "colour"], "image not found"),
        (["score", "{root}/corrupt.png", "--lvlm", "colour"], "not a readable image"),
        (["score", "{root}/ok.png", "--lvlm", "colour", "--valence", "nan", "--arousal", "0"], "finite"),
        (["score", "{root}/ok.png", "--lvlm", "{root}/no-model"], "not found"),
        (["loop", "--generator", "{root}/none", "--lvlm", "colour", "--prompt", "a", "--valence", "1", "--arousal", "0",
          "--out", "{root}/o1"], "--generator"),
        (["loop", "--generator", "{pipe}", "--lvlm", "colour", "--prompt", "a", "--valence", "1", "--arousal", "0",
          "--out", "{root}/afile"], "is a file"),
        (["loop", "--generator", "{pipe}", "--lvlm", "colour", "--prompt", "a", "--valence", "1", "--arousal", "0",
          "--out", "{root}/afile/sub"], "which is a file"),
        (["loop", "--generator", "{pipe}", "--lvlm", "colour", "--prompt", "a", "--valence", "1", "--arousal", "0",
          "--device", "cpu", "--lora", "{root}/bad.safetensors", "--out", "{root}/o2"], "not a readable safetensors"),
        (["loop", "--generator", "{pipe}", "--lvlm", "colour", "--prompt", "a", "--valence", "1", "--arousal", "0",
          "--device", "cpu", "--adapter", "{root}/bad.safetensors", "--out", "{root}/o3"], "safetensors"),
        (["loop", "--generator", "{pipe}", "--lvlm", "colour", "--prompt", "  ", "--valence", "1", "--arousal", "0"],
         "--prompt"),
        (["demo", "--prompt", "", "--out", "{root}/d"], "--prompt is empty"),
        (["demo", "--cfg", "nan"], "finite"),
        (["demo", "--seed", str(2**70)], "seed must be in"),
        (["demo", "--min-improvement", "inf"], "finite"),
        (train + ["--set", "optim.lr=NaN"], "optim.lr must be a finite"),
        (train + ["--set", "optim.lr=Infinity"], "optim.lr must be a finite"),
        (train + ["--set", "optim.adapter_lr=NaN"], "optim.adapter_lr"),
        (train + ["--set", "optim.betas=[0.9]"], "optim.betas must be two"),
        (train + ["--set", "seed=-1"], "seed must be in"),
        (train + ["--set", f"seed={2**70}"], "seed must be in"),
        (train + ["--set", "grpo.group_size=true"], "grpo.group_size"),
        (train + ["--set", "rewards.0.weight=NaN"], "rewards[0].weight"),
        (train + ["--model", "{root}/nothere"], "model.pretrained"),
        (train + ["--set", "data.prompts_file={root}/latin1.txt"], "not UTF-8"),
        (train + ["--set", "data.targets={root}/badrow.csv"], "row 1"),
        (train + ["--set", "model.adapter_init={root}/missing.safetensors"], "model.adapter_init"),
        (train + ["--output-dir", "{root}/afile"], "is a file"),
        (train + ["--output-dir", "{root}"], "not empty"),
        (train + ["--resume"], "nothing to resume"),
        (train + ["--allow-change", "model.lora_rank", "--resume"], "cannot be allowed"),
        (["train", "--config", "{root}/list.yaml", "--dry-run"], "table of sections"),
        (["train", "--config", "{root}/pytag.yaml", "--dry-run"], "safe) YAML"),
        (["train", "--config", "{root}/bad.toml", "--dry-run"], "not valid TOML"),
        (["train", "--config", "{root}/missing.toml"], "does not exist"),
        (["export", "--checkpoint", "{root}/nothere", "--out", "{root}/e"], "not a folder"),
        (["export", "--checkpoint", "{root}", "--out", "{root}/e"], "neither a checkpoint"),
        (["bench", "train", "--repeats", "0"], "--repeats"),
        (["bench", "scorer", "--image-size", "0"], "--image-size"),
        (["bench", "generate", "--batch", "0"], "--batch"),
        (["bench", "loop", "--plants", "0"], "--plants"),
        (["bench", "loop", "--families", "rotated,nope"], "unknown nope"),
        (["convert-scale", "--from", "sam", "10", "1"], "outside the sam range"),
        (["convert-scale", "3", "1"], "--from"),
    ]


@pytest.mark.parametrize("argv,message", _cases(), ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None)
def test_bad_input_ends_with_one_line_and_exit_code_2(files, argv, message, capsys):
    argv = [a.format(root=files["root"], config=files["config"], pipe=files["pipe"]) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (type= checks) also exit 2 with one line
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]
    assert message in last, last
    assert "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("argv", [
    ["train", "--config", "{config}", "--dry-run", "--device", "cuda"],
    ["train", "--config", "{config}", "--dry-run", "--set", "rewards.0.device=cuda"],
    ["bench", "train", "--device", "cuda"],
    ["loop", "--generator", "{pipe}", "--lvlm", "colour", "--prompt", "a", "--valence", "1", "--arousal", "0",
     "--device", "cuda", "--out", "{root}/cuda_out"],
])
def test_a_device_that_cannot_be_had_is_refused(files, argv, capsys):
    argv = [a.format(root=files["root"], config=files["config"], pipe=files["pipe"]) for a in argv]
    assert main(argv) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_debug_shows_the_traceback_and_version_prints(files, capsys):
    assert main(["--debug", "score", str(files["root"] / "missing.png"), "--lvlm", "colour"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["score", str(files["root"] / "missing.png"), "--lvlm", "colour", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("emofeedback2 ")


def _parsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, path + (name,))


def test_every_subcommand_has_a_description_and_every_option_its_default_in_help():
    parsers = list(_parsers(build_parser()))
    assert {p[0] for p in parsers} >= {("score",), ("loop",), ("demo",), ("train",), ("export",), ("convert-scale",),
                                       ("bench", "train"), ("bench", "scorer")}
    for path, parser in parsers:
        assert parser.description, f"{' '.join(path)} has no description"
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            assert action.help, f"{' '.join(path)} {action.option_strings[0]} has no help"
        options = [a for a in parser._actions if a.option_strings and a.default is not argparse.SUPPRESS
                   and a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
        assert text.count("(default:") >= len(options), f"{' '.join(path)}: some option lacks its default in --help"
        formatter = parser._get_formatter()
        for action in options:  # each option says its default once, and it is the parser's own
            shown = formatter._expand_help(action)
            where = f"{' '.join(path)} {action.option_strings[0]}: {shown!r}"
            assert len(re.findall(r"\(default\b|\bdefault:", shown)) == 1, where
            if action.default is not None:  # None means "decided later": a hand-written note says how
                assert shown.endswith(f"(default: {action.default})"), where


def test_16_bit_images_are_scaled_not_clipped_and_score_like_their_8_bit_twin(tmp_path, capsys):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray((ramp / 257).round().astype(np.uint8)).save(tmp_path / "g8.png")
    from emofeedback2.engines.images import load_image_file

    sixteen = np.asarray(load_image_file(tmp_path / "g16.png"))
    assert (sixteen == 255).mean() < 0.01  # convert("RGB") made 99.6% of these pixels 255
    assert np.abs(sixteen.astype(int) - np.asarray(load_image_file(tmp_path / "g8.png")).astype(int)).max() <= 1
    assert main(["score", str(tmp_path / "g16.png"), str(tmp_path / "g8.png"), "--lvlm", "colour", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["readings"]
    assert abs(rows[0]["valence"] - rows[1]["valence"]) < 0.02 and abs(rows[0]["arousal"] - rows[1]["arousal"]) < 0.02


def test_an_oversize_image_is_refused_naming_the_limit(tmp_path, capsys):
    from emofeedback2.engines.images import MAX_FILE_PIXELS

    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")  # 400 M pixels, a few KB on disk
    assert main(["score", str(tmp_path / "huge.png"), "--lvlm", "colour"]) == 2
    err = capsys.readouterr().err
    assert str(MAX_FILE_PIXELS) in err and "Traceback" not in err


def test_every_scorer_has_the_same_size_rule(tiny_lvlm_dir):
    from emofeedback2.engines.judge.color_scorer import ColorHeuristicScorer
    from emofeedback2.engines.images import ImageBatchError
    from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm

    scorers = [ColorHeuristicScorer(), load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu"))]
    for scorer in scorers:
        for size in [(1, 1), (1, 40), (2, 700)]:
            with pytest.raises(ImageBatchError, match="pixels"):
                scorer.score([Image.new("RGB", size, (90, 20, 200))])
        assert len(scorer.score([Image.new("RGB", (2, 2), (90, 20, 200))])) == 1


def test_strict_json_replaces_nan():
    from emofeedback2.cli.loop_outputs import strict_json

    cleaned = strict_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2.5}})
    assert cleaned == {"a": None, "b": [1.0, None], "c": {"d": 2.5}}
    json.dumps(cleaned, allow_nan=False)


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory, tiny_pipeline_dir):
    root = tmp_path_factory.mktemp("demo_models_fs")
    (root / "tiny-sd15").symlink_to(tiny_pipeline_dir, target_is_directory=True)
    return root


def test_demo_writes_each_round_as_it_completes_and_keeps_them_when_a_later_round_fails(tmp_path, demo_models,
                                                                                         monkeypatch, capsys):
    from emofeedback2.engines.demo import toy_demo as demo

    class GeneratorBroke(UserError):
        pass

    real = demo.MoodGradedGenerator.generate

    def generate(self, request, progress=None):
        if min(request.seeds) >= 2:  # round 2 (candidates 0, 1 were round 1)
            raise GeneratorBroke("the generator failed in round 2")
        return real(self, request, progress)

    monkeypatch.setattr(demo.MoodGradedGenerator, "generate", generate)
    out = tmp_path / "out"
    code = main(["demo", "--out", str(out), "--rounds", "3", "--candidates", "2", "--size", "16", "--steps", "1",
                 "--tolerance", "0", "--workdir", str(demo_models)])
    assert code == 2 and "round 2" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "round_01").iterdir()) == ["candidate_00_seed0.png", "candidate_01_seed1.png"]
    assert not (out / "round_02").exists()
    report = _strict((out / "report.json").read_text())
    assert report["complete"] is False and len(report["rounds"]) == 1 and "GeneratorBroke" in report["error"]

    monkeypatch.setattr(demo.MoodGradedGenerator, "generate", real)  # control: the same run, unbroken
    out2 = tmp_path / "out2"
    assert main(["demo", "--out", str(out2), "--rounds", "2", "--candidates", "2", "--size", "16", "--steps", "1",
                 "--tolerance", "0", "--workdir", str(demo_models)]) == 0
    report = _strict((out2 / "report.json").read_text())
    assert report["complete"] is True and len(report["rounds"]) == 2
    assert (out2 / "round_02" / "candidate_01_seed3.png").is_file() and (out2 / "best.png").is_file()


def test_convert_scale_values_and_files(tmp_path, capsys):
    assert main(["convert-scale", "--from", "sam", "9", "5"]) == 0
    v, a = map(float, capsys.readouterr().out.split())
    assert (v, a) == (3.0, 0.0)
    source = tmp_path / "emotic.csv"
    source.write_text("\ufeffValence , Arousal,prompt\n10,1,a storm\n")
    assert main(["convert-scale", "--from", "emotic", "--csv", str(source), str(tmp_path / "t.csv")]) == 0
    from emofeedback2.training.generator.data import load_targets

    (point, prompt), = load_targets(tmp_path / "t.csv")
    assert math.isclose(point.valence, 3.0) and math.isclose(point.arousal, -3.0) and prompt == "a storm"


def test_data_files_with_bom_spaced_headers_and_json_suffixes_are_read(tmp_path):
    from emofeedback2.training.generator.data import DataError, load_prompts, load_targets

    (tmp_path / "a.csv").write_bytes("\ufeff Valence , AROUSAL ,Prompt\n1,-2,x\n".encode())
    (tmp_path / "b.JSONL").write_text('{"valence": 1, "arousal": -2, "prompt": "x"}\n\n')
    (tmp_path / "c.json").write_text('[{"valence": 1, "arousal": -2, "prompt": "x"}]')
    for name in ("a.csv", "b.JSONL", "c.json"):
        (point, prompt), = load_targets(tmp_path / name)
        assert (point.valence, point.arousal, prompt) == (1.0, -2.0, "x"), name
    (tmp_path / "p.txt").write_bytes("\ufeffa lake\n# comment\n".encode())
    assert load_prompts(tmp_path / "p.txt") == ["a lake"]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00x")
    with pytest.raises(DataError, match="UTF-8"):
        load_prompts(tmp_path / "bad.txt")
    for text, match in [('{"valence": 1}\n', "arousal"), ('[1, 2]', "row 1"), ('{"valence": "nan", "arousal": 0}\n', "row 1"),
                        ('not json\n', "line 1")]:
        (tmp_path / "t.jsonl").write_text(text) if not text.startswith("[") else (tmp_path / "t.json").write_text(text)
        with pytest.raises(DataError, match=match):
            load_targets(tmp_path / ("t.json" if text.startswith("[") else "t.jsonl"))
