"""``emofeedback2 bench judge``: does judge fine-tuning teach a judge to read V-A from image content?

Set-up (CPU, minutes): a tiny random Qwen2.5-VL judge and a synthetic labelled set written in the
manifest format, where valence is the image's brightness and arousal its warm/cool colour balance
(red minus blue), each mapped linearly to [-2.5, 2.5], with pixel noise; a train and a test split.
Three judges are evaluated on the test split with the scorer's normal read path:

* ``base``: the random model, no adapter;
* ``trained``: ``train-judge``'s soft-label LoRA on the training split;
* ``shuffled``: the same training on labels permuted between images (the negative control: it
  sees the same images and label distribution, but no image-label link, so its PLCC must stay near
  zero and its MAE must not beat the constant predictor).

Figures: per judge and axis MAE, PLCC, SRCC next to the constant predictor's MAE (training mean);
training throughput (images/s, forward + backward). The last line is
``judge_plcc_gain=<trained PLCC - base PLCC, mean over the two axes>``; the line before gives the
shuffled control's gain, which must stay near 0.

``--objective grpo`` trains both adapters with GRPO on the paper's format instead and evaluates every
judge in the format its adapter was trained on (the paper preset, :mod:`..engines.judge.preset_judge`),
adding the share of unparsable answers per judge. ``--cost`` skips training and prints what a reading
costs per image on the base judge (:mod:`.reading_cost`): the digit readout against judges that
write their answer, with generated tokens per image and a control whose cost must follow them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np


def write_synthetic_judge_set(folder: str | Path, n_train: int, n_test: int, seed: int, size: int = 112,
                              manifest_name: str = "manifest.csv") -> Path:
    """Write PNGs and a manifest whose labels depend on image content.

    valence = brightness, arousal = warm/cool balance; both linear in [-2.5, 2.5]. The images are
    flat colours with pixel noise, so the label is a property of the pixels and nothing else.
    """
    from PIL import Image

    from ..training.judge.data import write_manifest

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 12])
    rows = []
    for i in range(n_train + n_test):
        brightness = rng.uniform(0.2, 0.8)
        warmth = rng.uniform(-1.0, 1.0)
        colour = np.array([brightness + 0.2 * warmth, brightness, brightness - 0.2 * warmth])
        pixels = np.clip(colour[None, None, :] + rng.normal(0.0, 0.03, (size, size, 3)), 0.0, 1.0)
        path = folder / "images" / f"{i:04d}.png"
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path)
        rows.append({"image": path, "valence": round(-2.5 + 5.0 * (brightness - 0.2) / 0.6, 4),
                     "arousal": round(2.5 * warmth, 4), "scale": "va3", "split": "train" if i < n_train else "test"})
    return write_manifest(folder / manifest_name, rows)


#: The learning rate the tiny random judges of the tests and this benchmark train at.
TINY_JUDGE_LR = 4e-3


def judge_run_config(model_dir: str | Path, manifest: str | Path, out: str | Path, *, seed: int, steps: int,
                     batch_size: int = 16, shuffle_labels: bool = False, pixels: Optional[int] = None):
    """The judge-training config the learning test and this benchmark share (tiny-model settings)."""
    from ..training.judge.config import JudgeTrainConfig

    config = JudgeTrainConfig()
    config.model.pretrained = str(model_dir)
    config.model.device = "cpu"
    config.model.dtype = "float32"
    config.model.max_pixels = pixels * pixels if pixels else None
    config.data.manifest = str(manifest)
    config.data.shuffle_labels = shuffle_labels
    config.output_dir = str(out)
    config.seed = seed
    config.max_steps = steps
    config.save_every = max(1, steps)
    config.keep_checkpoints = 1
    config.optim.batch_size = batch_size
    config.optim.lr = TINY_JUDGE_LR  # the defaults are for a real-size judge
    config.progress = False
    return config


def train_judge(config, log: bool = False):
    """Train and export the adapter; returns (adapter folder, images/s)."""
    from ..training.judge.trainer import JudgeTrainer

    trainer = JudgeTrainer(config, log=log)
    try:
        trainer.train()
        out = trainer.export_adapter()
        return out, trainer.images_per_second
    finally:
        trainer.close()


def evaluate_folder(model_dir: str | Path, manifest: str | Path, adapter: Optional[str | Path], pixels: Optional[int],
                    reading: str = "auto"):
    """Load the judge like every consumer does (LVLMConfig(adapter=...)), read it as its adapter was trained
    (``reading="auto"``: a GRPO adapter in the paper's format) and evaluate it on the test split."""
    from ..engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
    from ..engines.judge.preset_judge import choose_reading, judge_with_reading
    from ..training.judge.data import read_manifest
    from ..training.judge.evaluate import evaluate_judge

    manifest = read_manifest(manifest)
    choice = choose_reading(reading, str(adapter) if adapter else None)
    scorer = judge_with_reading(load_lvlm(LVLMConfig(
        model=str(model_dir), adapter=str(adapter) if adapter else None, device="cpu", dtype="float32",
        max_pixels=pixels * pixels if pixels else None)), choice)
    rows = [s for s in manifest.samples if s.split == "test"]
    return evaluate_judge(scorer, rows, constant=manifest.label_means("train"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"],
                        help="tiny judge architecture (default qwen2_5_vl)")
    parser.add_argument("--train-images", type=int, default=64, help="synthetic training images (default 64)")
    parser.add_argument("--test-images", type=int, default=48, help="held-out test images, at least 3 (default 48)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per judge (default 300)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per training step (default 16)")
    parser.add_argument("--pixels", type=int, default=112, help="image side in pixels (112 = 16 image tokens)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, data and training (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--objective", default="soft_label", choices=["soft_label", "grpo"],
                        help="judge training objective; GRPO adapters are evaluated in the paper's format")
    parser.add_argument("--new-tokens", type=int, default=32,
                        help="grpo and --cost: cap on generated tokens per answer (default 32)")
    parser.add_argument("--cost", action="store_true",
                        help="only measure what a reading costs per image (digits vs presets), no training")
    parser.add_argument("--repeats", type=int, default=3, help="--cost: timed calls per path, median (default 3)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..tiny_models.lvlm import build_tiny_lvlm

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_lvlm(root / "model", family=args.family, seed=args.seed)
        manifest = write_synthetic_judge_set(root / "data", args.train_images, args.test_images, args.seed, args.pixels)
        if args.cost:
            return _cost(args, model_dir, manifest)
        print(f"[bench judge] tiny {args.family}, {args.train_images} train / {args.test_images} test synthetic images "
              f"({args.pixels}px: valence = brightness, arousal = warm/cool), {args.objective}, {args.steps} steps x "
              f"{args.batch_size}, {torch.get_num_threads()} CPU thread(s)")
        grpo = args.objective == "grpo"
        # the base judge is read the way the trained ones are: digits, or the paper format for GRPO adapters
        results = {"base": evaluate_folder(model_dir, manifest, None, args.pixels, "paper" if grpo else "auto")}
        speed = {}
        for name, shuffled in (("trained", False), ("shuffled", True)):
            config = judge_run_config(model_dir, manifest, root / name, seed=args.seed, steps=args.steps,
                                      batch_size=args.batch_size, shuffle_labels=shuffled, pixels=args.pixels)
            if grpo:
                config.objective.kind, config.objective.max_new_tokens = "grpo", args.new_tokens
            adapter, speed[name] = train_judge(config)
            results[name] = evaluate_folder(model_dir, manifest, adapter, args.pixels)
        print(f"{'judge':9s} {'axis':8s} {'MAE':>6s} {'const':>6s} {'PLCC':>6s} {'SRCC':>6s} {'acc@.5':>6s}"
              + (f" {'unparsable':>10s}" if grpo else ""))
        for name, ev in results.items():
            for axis in ("valence", "arousal"):
                m = getattr(ev, axis)
                f = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
                print(f"{name:9s} {axis:8s} {m.mae:6.3f} {m.mae_constant:6.3f} {f(m.plcc)} {f(m.srcc)} {m.acc_within_eps:6.3f}"
                      + (f" {ev.unparsable_share:10.1%}" if grpo else ""))
        print(f"training throughput: {speed['trained']:.1f} images/s ({args.objective}, batch {args.batch_size}, "
              f"{args.pixels}px)")
        base_plcc = results["base"].mean("plcc") or 0.0
        gain = (results["trained"].mean("plcc") or 0.0) - base_plcc
        control = (results["shuffled"].mean("plcc") or 0.0) - base_plcc
        print(f"trained MAE / constant MAE (mean over axes): {results['trained'].mean('mae') / results['trained'].mean('mae_constant'):.3f}; "
              f"shuffled control: {results['shuffled'].mean('mae') / results['shuffled'].mean('mae_constant'):.3f}")
        print(f"shuffled_control_plcc_gain={control:+.3f}")
        print(f"judge_plcc_gain={gain:+.3f}")
    return 0


def _cost(args: argparse.Namespace, model_dir: Path, manifest: Path) -> int:
    import torch

    from ..engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
    from ..training.judge.data import load_images, read_manifest
    from .reading_cost import measure_reading_costs, print_reading_costs

    scorer = load_lvlm(LVLMConfig(model=str(model_dir), device="cpu", dtype="float32",
                                  max_pixels=args.pixels * args.pixels))
    rows = [s for s in read_manifest(manifest).samples if s.split == "test"]
    images = load_images(rows)
    costs = measure_reading_costs(scorer, images, args.new_tokens, args.repeats)
    print_reading_costs(costs, args.new_tokens, f"tiny {args.family}, random weights, CPU, "
                        f"{torch.get_num_threads()} thread(s), batch of {len(images)} images of {args.pixels}px, "
                        f"median of {args.repeats} calls")
    return 0
