"""CLIPScore, CLIP-IQA and LPIPS-Continuous: formulas recomputed independently on tiny local weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from emofeedback2.evaluation.clip_metrics import CLIPLoadError, CLIPMetrics
from emofeedback2.evaluation.lpips_metric import LPIPSLoadError, LPIPSMetric
from emofeedback2.evaluation.metrics import neighbour_pairs
from emofeedback2.evaluation.report import QualityScores, build_report
from emofeedback2.evaluation.runner import EvalPlan, Sampling, run_evaluation
from emofeedback2.evaluation.targets import grid_targets
from emofeedback2.tiny_models.clip import build_tiny_clip, build_tiny_lpips

from eval_fakes import CellCodeGenerator, CellCodeScorer


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    return build_tiny_lpips(tmp_path_factory.mktemp("tiny_lpips"), net="alex", seed=0)


COLOURS = ((255, 0, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255), (0, 255, 0), (128, 128, 0))


def _images(size=40):
    """Flat colours: the tiny random CLIP gives them cosines of both signs with the prompts below."""
    return [Image.new("RGB", (size, size), colour) for colour in COLOURS]


def _reference_embeddings(clip_dir, images, texts):
    """CLIP embeddings computed from the towers directly (not through CLIPMetrics)."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(str(clip_dir)).eval(), CLIPProcessor.from_pretrained(str(clip_dir))
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        tok = processor.tokenizer(texts, padding=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(**tok).pooler_output)
    return torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


def test_clip_score_is_100_times_the_clamped_cosine(clip_dir):
    images, prompts = _images(), ["!!!", "a red house", "0123", "the quick brown fox", "sea", "0123"]
    img, txt = _reference_embeddings(clip_dir, images, sorted(set(prompts)))
    cos = torch.stack([img[i] @ txt[sorted(set(prompts)).index(p)] for i, p in enumerate(prompts)])
    assert (cos > 0).any() and (cos < 0).any()  # both sides of the clamp are exercised
    expected = (100 * cos.clamp(min=0)).tolist()
    assert CLIPMetrics(str(clip_dir)).clip_scores(images, prompts) == pytest.approx(expected, abs=1e-4)


def test_clip_iqa_is_the_good_photo_probability(clip_dir):
    images = _images()
    img, txt = _reference_embeddings(clip_dir, images, ["Good photo.", "Bad photo."])
    expected = torch.softmax(100 * img @ txt.T, dim=-1)[:, 0].tolist()
    got = CLIPMetrics(str(clip_dir)).clip_iqa(images)
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(got) - min(got) > 1e-3  # depends on the image


def test_clip_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(CLIPLoadError, match="config.json"):
        CLIPMetrics(str(tmp_path))


def _reference_lpips(folder, x, y):
    """LPIPS v0.1 (Zhang et al. 2018) written out: scaled input → AlexNet relu1..5 → channel-unit
    features → squared difference → learned 1×1 weights → spatial mean → sum over layers."""
    import torchvision
    from safetensors.torch import load_file

    features = torchvision.models.alexnet().features.eval()
    features.load_state_dict({k.removeprefix("features."): v for k, v in load_file(str(folder / "alexnet.safetensors")).items()})
    heads = torch.load(folder / "weights" / "v0.1" / "alex.pth", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        h = ((2 * img.permute(0, 3, 1, 2) - 1) - shift) / scale
        out = []
        for index, layer in enumerate(features):
            h = layer(h)
            if index in (1, 4, 7, 9, 11):
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        total = 0
        for n, (a, b) in enumerate(zip(taps(x), taps(y))):
            total = total + ((a - b) ** 2 * heads[f"lin{n}.model.1.weight"].view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_from_a_folder_matches_the_formula(lpips_dir):
    metric = LPIPSMetric(lpips_dir, net="alex")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 64, 64, 3, generator=g), torch.rand(3, 64, 64, 3, generator=g)
    got = metric.distance(x, y)
    assert got.tolist() == pytest.approx(_reference_lpips(lpips_dir, x, y).tolist(), rel=1e-4)
    assert metric.distance(x, x).abs().max() < 1e-6 and (got > 0).all()


def test_lpips_folder_errors_say_which_file_is_missing(tmp_path):
    with pytest.raises(LPIPSLoadError, match="alexnet.safetensors"):
        LPIPSMetric(tmp_path)
    with pytest.raises(LPIPSLoadError, match="not found"):
        LPIPSMetric(tmp_path / "nowhere")


def test_report_aggregates_quality_over_images_and_neighbours(tmp_path, clip_dir, lpips_dir):
    prompts, targets = ["a red house", "sea"], grid_targets(3)
    plan = EvalPlan(prompts=prompts, targets=targets, seeds=[0], sampling=Sampling(width=32, height=32, steps=1))
    records = run_evaluation(CellCodeGenerator(prompts, targets, size=32),
                             CellCodeScorer(targets, lambda p, s, t: (t.valence, 0.0)), plan, tmp_path)
    clip, lpips = CLIPMetrics(str(clip_dir)), LPIPSMetric(lpips_dir)
    report = build_report(records, tmp_path, prompts, QualityScores(records, tmp_path, clip=clip, lpips=lpips), run={})
    saved = [Image.open(tmp_path / r.file).convert("RGB") for r in records]
    assert report["clip_score"] == pytest.approx(np.mean(clip.clip_scores(saved, [r.prompt for r in records])))
    assert report["clip_iqa"] == pytest.approx(np.mean(clip.clip_iqa(saved)))

    def load(r):
        return torch.from_numpy(np.asarray(Image.open(tmp_path / r.file).convert("RGB"), dtype=np.float32) / 255)

    # neighbours found here from the grid arithmetic: same prompt, other axis equal, 1.5 apart
    pairs = [(a, b) for a in records for b in records if a.prompt_index == b.prompt_index and (
        (a.target_arousal == b.target_arousal and b.target_valence - a.target_valence == 3.0)
        or (a.target_valence == b.target_valence and b.target_arousal - a.target_arousal == 3.0))]
    assert len(pairs) == 2 * 12 == len(neighbour_pairs(records, "valence")) + len(neighbour_pairs(records, "arousal"))
    expected = np.mean([lpips.distance(load(a)[None], load(b)[None]).item() for a, b in pairs])
    assert report["lpips_continuous"] == pytest.approx(expected, rel=1e-5) and expected > 0
    assert report["per_prompt"][1]["clip_score"] == pytest.approx(
        np.mean(clip.clip_scores(saved[9:], ["sea"] * 9)))


def test_eval_with_real_loaders_fills_every_metric(tmp_path, tiny_pipeline_dir, tiny_lvlm_dir, clip_dir, lpips_dir, one_thread):
    """The non-demo route: a diffusers folder, an LVLM judge (digit masses), CLIP and LPIPS folders."""
    import csv
    import json

    from emofeedback2.cli import main
    from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm

    out = tmp_path / "run"
    assert main(["eval", "--generator", str(tiny_pipeline_dir), "--lvlm", str(tiny_lvlm_dir), "--prompt", "a house",
                 "--grid", "2", "--size", "32", "--steps", "1", "--device", "cpu", "--dtype", "float32",
                 "--text-strength", "1", "--clip", str(clip_dir), "--lpips", str(lpips_dir), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("clip_score", "clip_iqa", "lpips_continuous", "valence_digit_mass", "arousal_digit_mass"):
        assert report[key] is not None, (key, report["null_reasons"].get(key))
    assert 0 < report["valence_digit_mass"] <= 1 and 0 <= report["clip_iqa"] <= 1
    rows = list(csv.DictReader((out / "images.csv").open(newline="")))
    assert len(rows) == 4 and all(row["digit_mass_valence"] for row in rows)
    judge = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32"))
    for row in rows:  # the saved PNG re-scores to the CSV reading
        reading = judge.score([Image.open(out / row["file"])])[0]
        assert reading.valence == pytest.approx(float(row["valence"]), abs=1e-4)
        assert reading.arousal == pytest.approx(float(row["arousal"]), abs=1e-4)
