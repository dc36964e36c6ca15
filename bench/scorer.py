"""``emofeedback2 bench scorer``: the expected-value reading against generating and parsing an answer.

Expected value (ours): the prompt and the B images in one left-padded pass, then the two answer
prefixes (``"Valence: "``, ``"Arousal: "``) as 2·B short rows on its key/value cache, reading the
digit-token distribution after each prefix.

Compared in the same run, same model, same images, greedy, batched, left-padded:

* ``prefill`` (the physical floor): one forward pass of the same prompt and images with no answer
  rows. ``ev_over_prefill`` = expected-value time / prefill time (1.0 is the floor; goal ≤ 1.1).
* ``digits_answer`` (the like-for-like headline): the scorer's own question, its 1–9 scale and the
  same image tokens; the model generates just the two digits' answer (``"7, 3"`` and the end token)
  and the text is parsed. ``ev_vs_generate_speedup`` compares with this path.
* ``labelled_answer``: the same question, with the answer labels the expected-value path feeds
  (``"Valence: 7\nArousal: 3"``) written by the model; token counts depend on the tokenizer (the tiny
  model's is byte-level, so this answer is longer there than with Qwen's). Printed, not a headline.
* ``paper_format``: a short chain of thought and then ``<answer>V, A</answer>`` on [-3, 3] with two
  decimals, the output format EmoFeedback²'s GRPO-tuned judge writes (``--reasoning-tokens``,
  default 64). Another prompt and another scale: its ratio is the favourable framing and is
  printed on the line before the headline, not as the headline.

Each generating path produces exactly its token count (``min_new_tokens``), so a random model that
never stops costs what a trained one answering in that format would. The expected-value reading's
digit probability mass is reported (mean, and the readings below ``LOW_DIGIT_MASS``, which the
score CLI and the scorer node flag); a random tiny model puts little mass on the digits.

Default: the tiny random Qwen2.5-VL built locally (CPU). ``--real-size qwen2.5-vl-7b --device cuda
--dtype bfloat16`` builds the real 7B architecture with random weights directly on the GPU (tiny
byte tokenizer, real image processor patching) and also prints peak GPU memory per path.
``--family`` picks any tiny family (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, ``qwen3_5``, ``gemma3``,
``gemma4``, ``internvl``, ``llava_onevision``, ``smolvlm``). Beside the timings it prints
``batch_vs_single_max_diff=<x>``: the largest difference between reading a batch of images of mixed
sizes (left-padded where the family's token counts differ) and reading each image alone.
The last three lines: ``ev_over_prefill=<x>``, ``ev_vs_paper_format_speedup=<x>``,
``ev_vs_generate_speedup=<x>`` (ratios of median times, all paths measured in this run).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from typing import Any, Callable

from ..engines.judge.paper_format import ANSWER_TAG, REASONING_INSTRUCTION
from ..tiny_models.lvlm import FAMILIES  # a tuple of names: no model code is imported

DIGITS = re.compile(r"^\s*([1-9])\s*[,;/ ]\s*([1-9])\b")
DIGITS_EXAMPLE = "7, 3"
LABELLED = re.compile(r"Valence:\s*([1-9])\b.*?Arousal:\s*([1-9])\b", re.DOTALL)
LABELLED_EXAMPLE = "Valence: 7\nArousal: 3"
# the names tiny_models.lvlm.real_size_config builds, listed here so --help needs no import;
# tests/test_cli_outputs.py checks the two agree
REAL_SIZES = ("qwen2.5-vl-7b",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls of each path (default 9; the median counts)")
    parser.add_argument("--family", default="qwen2_5_vl", choices=FAMILIES,
                        help="tiny model family (ignored with --real-size)")
    parser.add_argument("--real-size", default=None, choices=REAL_SIZES,
                        help="build a real-size architecture with random weights instead")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="image area per image for the vision encoder (default: tiny processor's; 200704 real-size)")
    parser.add_argument("--image-size", type=int, default=448, help="side of the synthetic test images (default 448)")
    parser.add_argument("--reasoning-tokens", type=int, default=64,
                        help="tokens the paper-format baseline generates per image: short reasoning + answer (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _images(n: int, size: int):
    """Deterministic, varied test images (colour gradients), as PIL."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    out = []
    for i in range(n):
        r = (ramp[None, :] * (i + 1) / n) * np.ones((size, 1), np.float32)
        g = (ramp[:, None] * (n - i) / n) * np.ones((1, size), np.float32)
        b = np.full((size, size), (i % 3) / 2.0, np.float32)
        out.append(Image.fromarray((np.stack([r, g, b], -1) * 255).astype(np.uint8), mode="RGB"))
    return out


def _mixed_images(n: int, size: int):
    """``n`` images of different sizes and aspect ratios (at least 3), so a batch of them needs padding."""
    shapes = [(size, size), (size, max(16, size // 2)), (max(16, (3 * size) // 4), size), (max(16, size // 3), size)]
    images = []
    for i in range(max(n, 3)):
        w, h = shapes[i % len(shapes)]
        images.append(_images(i + 1, max(w, h))[i].resize((w, h)))
    return images


def batch_vs_single_max_diff(scorer, images) -> tuple[float, float]:
    """``(largest |batched − one-by-one|, control)`` over valence, arousal and digit mass for ``images``.

    The control is the largest difference between one image's reading and the next image's (each read
    alone): what a batch that mixed up its rows would show. Equality means something only well below it.
    """
    import torch

    names = ("valence", "arousal", "digit_mass_valence", "digit_mass_arousal")
    with torch.no_grad():
        batched = scorer.score_details(images)
        singles = [scorer.score_details([image]) for image in images]
    diff = max(abs(getattr(batched, n)[i].item() - getattr(singles[i], n)[0].item())
               for i in range(len(images)) for n in names)
    control = max(abs(getattr(singles[i], n)[0].item() - getattr(singles[i - 1], n)[0].item())
                  for i in range(1, len(images)) for n in names)
    return diff, control


def _build_scorer(args: argparse.Namespace, workdir: str):
    import torch

    from ..engines.devices import DTYPES
    from ..engines.judge.lvlm_scorer import LVLMConfig, LVLMScorer, load_lvlm
    from ..tiny_models.lvlm import build_processor, build_tiny_lvlm, real_size_config

    if args.real_size is None:
        folder = build_tiny_lvlm(f"{workdir}/{args.family}", family=args.family, seed=0)
        config = LVLMConfig(model=str(folder), device=args.device, dtype=args.dtype, max_pixels=args.max_pixels)
        return load_lvlm(config), f"tiny {args.family} (random weights, loaded from {folder})"

    from transformers import AutoModelForImageTextToText

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    hf_config = real_size_config(args.real_size)
    with device:  # allocate the weights on the device directly (no CPU copy of 8B parameters)
        model = AutoModelForImageTextToText.from_config(hf_config, dtype=dtype)
    model.eval()
    processor = build_processor("qwen2_5_vl", max_pixels=args.max_pixels or 200704)
    config = LVLMConfig(model=f"random-{args.real_size}", device=str(device), dtype=args.dtype)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    return LVLMScorer(model, processor, config, device=device, dtype=dtype), f"{args.real_size} architecture, random weights ({params:.2f}B parameters)"


def _digit_to_va(digit: float) -> float:
    from ..engines.emotion_space import VA_MIN, VA_SPAN

    return VA_MIN + (digit - 1.0) * VA_SPAN / 8.0


def _answer_tokens(scorer, example: str) -> int:
    """Tokens of ``example`` in this model's tokenizer, plus the end token."""
    return len(scorer.tokenizer.encode(example, add_special_tokens=False)) + 1


def _generate_then_parse(scorer, images, new_tokens: int, instruction: str, answer: re.Pattern,
                         on_digit_scale: bool = False) -> tuple[int, list[Any]]:
    """Generate the answer text for every image in one batch and parse it (values in [-3, 3])."""
    import torch

    texts = [scorer._chat(instruction)] * len(images)
    with scorer._on_device(), torch.no_grad():
        encoded = scorer._encode(texts, images)
        generated = scorer.model.generate(
            **encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=scorer.tokenizer.pad_token_id,
        )
    answers = scorer.tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    readings = []
    for text in answers:
        m = answer.search(text)
        values = [float(g) for g in m.groups()] if m else None
        if values is not None and on_digit_scale:
            values = [_digit_to_va(v) for v in values]
        readings.append(tuple(values) if values and all(abs(v) <= 3 for v in values) else None)
    return sum(r is not None for r in readings), readings


def _prefill(scorer, images) -> None:
    """The floor: the expected-value path's prompt + image pass alone, with no answer rows."""
    import torch

    prompt = scorer._chat(scorer.prompts.question)
    with scorer._on_device(), torch.no_grad():
        if scorer._shares_vision():
            encoded = scorer._encode_shared([prompt], images)
        else:
            encoded = scorer._encode([prompt] * len(images), images)
        scorer.model(**encoded, use_cache=scorer._shares_prefix(prompt, [scorer.prompts.valence_prefix,
                                                                         scorer.prompts.arousal_prefix]),
                     logits_to_keep=1)


def _interleaved_times(paths: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Per-call seconds of each path, calls alternating (A B A B …) after one warm-up each, so that
    load from other processes hits both paths alike."""
    for fn in paths.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> int:
    import torch

    if min(args.images, args.repeats, args.reasoning_tokens) < 1:
        print("error: --images, --repeats and --reasoning-tokens must be at least 1")
        return 2
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"error: --device {args.device} but no CUDA GPU is available")
        return 2
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="emofeedback2_bench_") as workdir:
        scorer, description = _build_scorer(args, workdir)
        images = _images(args.images, args.image_size)
        print(f"model: {description}")
        print(f"device {args.device}, dtype {args.dtype}, batch of {args.images} images {args.image_size}x{args.image_size}, "
              f"{args.repeats} timed calls per path (alternating, median) after one warm-up")

        question = scorer.prompts.question
        digits_tokens = _answer_tokens(scorer, DIGITS_EXAMPLE)
        labelled_tokens = _answer_tokens(scorer, LABELLED_EXAMPLE)
        paths = {
            "expected_value": lambda: scorer.score_details(images),
            "prefill": lambda: _prefill(scorer, images),
            "digits_answer": lambda: _generate_then_parse(scorer, images, digits_tokens, question, DIGITS, True),
            "labelled_answer": lambda: _generate_then_parse(scorer, images, labelled_tokens, question, LABELLED, True),
            "paper_format": lambda: _generate_then_parse(scorer, images, args.reasoning_tokens, REASONING_INSTRUCTION, ANSWER_TAG),
        }
        times = _interleaved_times(paths, args.repeats, sync)
        median = {name: statistics.median(t) for name, t in times.items()}
        peaks = {}
        if cuda:  # a separate, untimed call per path for its peak memory
            for name, fn in paths.items():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                fn()
                sync()
                peaks[name] = torch.cuda.max_memory_allocated() / 2**30

        from ..engines.judge.scoring import LOW_DIGIT_MASS

        details = scorer.score_details(images)
        mass = torch.minimum(details.digit_mass_valence, details.digit_mass_arousal)
        generating = ("digits_answer", "labelled_answer", "paper_format")
        n_parsed = {name: paths[name]()[0] for name in generating}
        tokens = {"digits_answer": digits_tokens, "labelled_answer": labelled_tokens, "paper_format": args.reasoning_tokens}
        how = {"digits_answer": f"the scorer's question and 1-9 scale, answer '{DIGITS_EXAMPLE}' + end token",
               "labelled_answer": "the same, with the scorer's answer labels written out: "
                                  f"{LABELLED_EXAMPLE!r} + end token",
               "paper_format": "reasoning + <answer>V, A</answer>, [-3, 3] with decimals"}
        prompt = scorer._chat(question)
        mode = (f"prompt+image pass of {args.images} rows, then {2 * args.images} answer-prefix rows on its cache"
                if scorer._shares_prefix(prompt, [scorer.prompts.valence_prefix, scorer.prompts.arousal_prefix])
                else f"one forward pass of {2 * args.images} rows")
        mixed = _mixed_images(args.images, args.image_size)
        padded = scorer._encode([prompt] * len(mixed), mixed)["attention_mask"].sum(dim=1).tolist()
        ips = {name: args.images / t for name, t in median.items()}
        print(f"expected_value: {ips['expected_value']:.2f} images/s ({mode}; every image gets a reading); "
              f"digit mass mean {mass.mean():.3f}, {int((mass < LOW_DIGIT_MASS).sum())}/{args.images} readings "
              f"below {LOW_DIGIT_MASS:g} (flagged low_digit_mass)")
        print(f"prefill: {ips['prefill']:.2f} images/s (the same prompt and images, one forward pass, no answer rows)")
        for name in generating:
            print(f"generate_then_parse[{name}]: {ips[name]:.2f} images/s ({tokens[name]} new tokens per image, "
                  f"{how[name]}; parsed {n_parsed[name]}/{args.images} answers)")
        for name, peak in peaks.items():
            print(f"peak_memory_{name}_gib={peak:.2f}")
        print(f"mixed sizes: {', '.join(f'{im.width}x{im.height}' for im in mixed)} -> prompt lengths {padded} tokens "
              f"(one left-padded batch, compared with reading each alone)")
        diff, control = batch_vs_single_max_diff(scorer, mixed)
        print(f"control: one image's reading against the next image's (what mixed-up rows would show): "
              f"max diff {control:.2e}" + ("" if len(set(padded)) > 1 else
                                             "; no padding here: this family gives every image the same token count"))
        print(f"batch_vs_single_max_diff={diff:.2e}")
        print(f"ev_vs_labelled_answer_speedup={median['labelled_answer'] / median['expected_value']:.2f}")
        print(f"ev_over_prefill={median['expected_value'] / median['prefill']:.3f}")
        print(f"ev_vs_paper_format_speedup={median['paper_format'] / median['expected_value']:.2f}")
        print(f"ev_vs_generate_speedup={median['digits_answer'] / median['expected_value']:.2f}")
    return 0
