"""One resolution everywhere: the pixel limits a judge adapter was trained at travel with it.

``train-judge`` records them in the adapter's ``judge_training.json``; ``load_lvlm`` applies them
whenever that adapter is loaded, so training, the training reward, ``score``/``eval-judge`` and
the ComfyUI LVLM Loader all feed the judge the same number of image tokens. An explicit setting
still wins, and one log line says it overrides the adapter's.

The tiny judge reads a 112 x 112 image as 16 merged image tokens when trained at
``max_pixels = 112 * 112``, and as 4 at its processor's own limit: the count tells which limit applied.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from PIL import Image

from emofeedback2.bench.judge import judge_run_config, write_synthetic_judge_set
from emofeedback2.cli import main
from emofeedback2.engines.judge import lvlm_scorer
from emofeedback2.engines.judge.lvlm_loading import adapter_pixel_limits
from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
from emofeedback2.training.generator.config import ConfigError, RewardSpec, TrainConfig, validate
from emofeedback2.training.generator.rewards import build_reward
from emofeedback2.training.judge.trainer import JudgeTrainer

SIDE = 112
TRAINED_PIXELS = SIDE * SIDE
LOGGER = "emofeedback2.engines.judge.lvlm_loading"


def image_tokens(scorer, image) -> int:
    """How many image slots the judge's prompt gets for ``image``: the processor decides, from its pixel limits."""
    encoded = scorer._encode([scorer._chat("Rate it.")], [image])
    return int((encoded["input_ids"] == scorer.model.config.image_token_id).sum())


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (SIDE, SIDE), (200, 120, 40))


@pytest.fixture(scope="module")
def trained(tiny_lvlm_dir, tmp_path_factory, image):
    """A one-step adapter trained at max_pixels = 112 * 112, and the image token count its training saw."""
    root = tmp_path_factory.mktemp("pixels")
    manifest = write_synthetic_judge_set(root / "data", n_train=2, n_test=0, seed=1, size=SIDE)
    config = judge_run_config(tiny_lvlm_dir, manifest, root / "adapter", seed=0, steps=1, batch_size=2, pixels=SIDE)
    trainer = JudgeTrainer(config, log=False)
    trainer.train()
    out = trainer.export_adapter()
    return out, image_tokens(trainer.scorer, image)


def test_the_adapter_records_the_pixel_limits_it_was_trained_at(trained):
    adapter, training_tokens = trained
    record = json.loads((adapter / "judge_training.json").read_text())
    assert record["pixels"]["max_pixels"] == TRAINED_PIXELS and record["pixels"]["min_pixels"] > 0
    assert adapter_pixel_limits(str(adapter)) == record["pixels"]
    assert training_tokens == 16


def test_training_reward_score_eval_and_the_loader_node_see_the_training_token_count(
        trained, tiny_lvlm_dir, image, fake_comfy, monkeypatch, caplog, capsys, tmp_path):
    adapter, training_tokens = trained
    base = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32"))
    assert image_tokens(base, image) == 4 != training_tokens  # without the adapter's limits: another resolution

    reward = build_reward([RewardSpec(kind="lvlm", path=str(tiny_lvlm_dir), adapter=str(adapter))], "cpu")
    seen = {"reward": image_tokens(reward.rewards[0].scorer, image)}

    loaded = []
    real_load = lvlm_scorer.load_lvlm
    monkeypatch.setattr(lvlm_scorer, "load_lvlm", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    image_file = tmp_path / "image.png"
    image.save(image_file)
    assert main(["score", str(image_file), "--lvlm", str(tiny_lvlm_dir), "--adapter", str(adapter),
                 "--device", "cpu", "--json"]) == 0
    assert len(loaded) == 1, "score did not load its judge through load_lvlm"
    seen["score"] = image_tokens(loaded[-1], image)
    manifest = write_synthetic_judge_set(tmp_path / "eval", n_train=0, n_test=3, seed=2, size=SIDE)
    assert main(["eval-judge", "--data", str(manifest), "--lvlm", str(tiny_lvlm_dir), "--adapter", str(adapter),
                 "--device", "cpu", "--dtype", "float32", "--plots", ""]) == 0
    assert len(loaded) == 2, "eval-judge did not load its judge through load_lvlm"
    seen["eval-judge"] = image_tokens(loaded[-1], image)
    capsys.readouterr()

    from emofeedback2.nodes.loader_nodes import LVLMLoader

    llm = fake_comfy.models_dir / "LLM"
    shutil.copytree(tiny_lvlm_dir, llm / "tiny-judge-base")
    shutil.copytree(adapter, llm / "emo-judge", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    node = LVLMLoader().load(model="tiny-judge-base", device="cpu", dtype="float32", adapter="emo-judge")[0]
    seen["loader node"] = image_tokens(node, image)
    node_base = LVLMLoader().load(model="tiny-judge-base", device="cpu", dtype="float32")[0]
    assert node_base.processor.image_processor.size["longest_edge"] == 401408  # no adapter: the node's speed cap

    assert seen == dict.fromkeys(seen, training_tokens), seen
    assert not [r for r in caplog.records if r.name == LOGGER and "overrides" in r.getMessage()]


def test_an_explicit_setting_overrides_the_adapters_and_says_so(trained, tiny_lvlm_dir, image, fake_comfy, caplog):
    adapter, _ = trained
    small = 56 * 56
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), adapter=str(adapter), device="cpu", dtype="float32",
                                      max_pixels=small))
    assert image_tokens(scorer, image) == 4
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and f"max_pixels={small} (trained at {TRAINED_PIXELS})" in lines[0]
    assert "overrides" in lines[0] and adapter.name in lines[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reward = build_reward([RewardSpec(kind="lvlm", path=str(tiny_lvlm_dir), adapter=str(adapter),
                                          max_pixels=small)], "cpu")
    assert image_tokens(reward.rewards[0].scorer, image) == 4 and len(caplog.records) == 1

    from emofeedback2.nodes.loader_nodes import LVLMLoader

    llm = fake_comfy.models_dir / "LLM"
    shutil.copytree(tiny_lvlm_dir, llm / "tiny-judge-base")
    shutil.copytree(adapter, llm / "emo-judge", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        node = LVLMLoader().load(model="tiny-judge-base", device="cpu", dtype="float32", adapter="emo-judge",
                                 max_pixels=small)[0]
    assert image_tokens(node, image) == 4 and len(caplog.records) == 1

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):  # the same value as in training is no override
        same = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), adapter=str(adapter), device="cpu", dtype="float32",
                                    max_pixels=TRAINED_PIXELS))
    assert image_tokens(same, image) == 16 and not caplog.records


@pytest.mark.parametrize("content", [
    '{"pixels": {"max_pixels": "12544", "min_pixels": -3}}', '{"pixels": {"max_pixels": true}}', '{"pixels": [1]}',
    "[]", "not json", '{"steps": 3}',
])
def test_a_record_without_usable_limits_is_ignored(tmp_path, content):
    (tmp_path / "judge_training.json").write_text(content, encoding="utf-8")
    assert adapter_pixel_limits(str(tmp_path)) == {}
    assert adapter_pixel_limits(str(tmp_path / "missing")) == {} and adapter_pixel_limits(None) == {}


def test_only_processors_sized_by_area_report_pixel_limits(tiny_lvlm_dirs):
    """SmolVLM sizes by edge length: its ``size.longest_edge`` is no ``max_pixels`` (it was recorded as one,
    the tiny SmolVLM's 64 px edge as ``max_pixels: 64``, and then warned about as an override)."""
    from emofeedback2.engines.judge.lvlm_loading import processor_pixel_limits

    smolvlm = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dirs["smolvlm"]), device="cpu", dtype="float32"))
    assert "longest_edge" in smolvlm.processor.image_processor.size
    assert processor_pixel_limits(smolvlm.processor) == {"min_pixels": None, "max_pixels": None}
    qwen = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dirs["qwen2_5_vl"]), device="cpu", dtype="float32",
                                max_pixels=TRAINED_PIXELS))
    assert processor_pixel_limits(qwen.processor)["max_pixels"] == TRAINED_PIXELS


def test_an_adapter_under_home_is_read_alike_by_every_reader(tmp_path, monkeypatch):
    """``~/adapter``: pixel limits, objective and the model card's record all come from the one reader.

    Before, only the pixel limits expanded ``~``: a GRPO adapter given as ``~/x`` had no objective, so
    ``choose_reading('auto')`` read it with the digit readout."""
    from emofeedback2.engines.judge.adapter_record import adapter_generation_cap, adapter_objective
    from emofeedback2.engines.judge.preset_judge import choose_reading
    from emofeedback2.training.judge.adapter_card import read_training_record

    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / "grpo-judge"
    folder.mkdir()
    record = {"objective": "grpo", "objective_settings": {"max_new_tokens": 48}, "pixels": {"max_pixels": 12544}}
    (folder / "judge_training.json").write_text(json.dumps(record), encoding="utf-8")
    adapter = "~/grpo-judge"
    assert adapter_pixel_limits(adapter) == {"max_pixels": 12544}
    assert adapter_objective(adapter) == "grpo" and adapter_generation_cap(adapter) == 48
    assert read_training_record(adapter) == record
    choice = choose_reading("auto", adapter)
    assert choice.preset is not None and choice.preset.name == "paper" and choice.max_new_tokens == 48


def test_reward_max_pixels_is_checked():
    config = TrainConfig()
    config.rewards = [RewardSpec(kind="lvlm", path="judge", max_pixels=-1)]
    with pytest.raises(ConfigError, match=r"rewards\[0\].max_pixels must be >= 0"):
        validate(config)
    config.rewards = [RewardSpec(kind="color", max_pixels=4096)]
    with pytest.raises(ConfigError, match="applies to the LVLM judge only"):
        validate(config)
