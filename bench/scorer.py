"""``emofeedback2 bench scorer``: expected-value scoring vs generate-then-parse, same model, same images.

Expected value (ours): the prompt and the B images in one left-padded pass, then the two answer
prefixes (``"Valence: "``, ``"Arousal: "``) as 2·B short rows on its key/value cache, reading the
digit-token distribution after each prefix.

Two generate-then-parse baselines, same model, same images, greedy, batched, left-padded:

* ``paper_format`` (the headline): the judge writes a short chain of thought and then its answer,
  ``<think>…</think><answer>V, A</answer>``, which is the output format EmoFeedback²'s GRPO-tuned
  judge is trained to follow (its format reward). ``--reasoning-tokens`` (default 64, a short
  reasoning) tokens are generated per image.
* ``bare_answer``: the most favourable case for generation: only ``"V, A"`` with two decimals, e.g.
  ``"-1.25, 0.50"``; Qwen tokenises every digit, sign, point, comma and space alone, so that answer
  plus the end token is 12 tokens (``--new-tokens``).

Each baseline generates exactly its token count (``min_new_tokens``), so a random model that never
stops costs what a trained one answering in that format would.

Default: the tiny random Qwen2.5-VL built locally (CPU). ``--real-size qwen2.5-vl-7b --device cuda
--dtype bfloat16`` builds the real 7B architecture with random weights directly on the GPU (tiny
byte tokenizer, real image processor patching) and also prints peak GPU memory per path.
The last line is ``ev_vs_generate_speedup=<x>`` against the paper-format baseline (ratio of median
images/s, all paths measured in this run); the line before gives the ratio against the bare answer.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from typing import Any, Callable

from ..engines.paper_format import ANSWER_TAG, REASONING_INSTRUCTION

ANSWER = re.compile(r"^\s*([+-]?\d(?:\.\d+)?)\s*,\s*([+-]?\d(?:\.\d+)?)")
BASELINE_INSTRUCTION = (
    "Rate the emotion this image evokes: valence from -3 (very unpleasant) to 3 (very pleasant) and "
    "arousal from -3 (very calm) to 3 (very excited), with two decimals. Answer only as 'valence, arousal'."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each path (default 5; the median counts)")
    parser.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"],
                        help="tiny model family (ignored with --real-size)")
    parser.add_argument("--real-size", default=None, metavar="NAME",
                        help="build a real-size architecture with random weights instead, e.g. qwen2.5-vl-7b")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="image area per image for the vision encoder (default: tiny processor's; 200704 real-size)")
    parser.add_argument("--image-size", type=int, default=448, help="side of the synthetic test images (default 448)")
    parser.add_argument("--new-tokens", type=int, default=12,
                        help="tokens the bare-answer baseline generates per image (default 12: '-1.25, 0.50' + end token)")
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


def _build_scorer(args: argparse.Namespace, workdir: str):
    import torch

    from ..engines.devices import DTYPES
    from ..engines.lvlm_scorer import LVLMConfig, LVLMScorer, load_lvlm
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


def _generate_then_parse(scorer, images, new_tokens: int, instruction: str = BASELINE_INSTRUCTION,
                         answer: re.Pattern = ANSWER) -> tuple[int, list[Any]]:
    """A baseline: generate the answer text for every image in one batch and parse it."""
    import torch

    texts = [scorer._chat(instruction)] * len(images)
    encoded = scorer._encode(texts, images)
    with torch.no_grad():
        generated = scorer.model.generate(
            **encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=scorer.tokenizer.pad_token_id,
        )
    answers = scorer.tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    parsed = [answer.search(text) for text in answers]
    readings = [(float(m.group(1)), float(m.group(2))) if m and all(abs(float(g)) <= 3 for g in m.groups()) else None
                for m in parsed]
    return sum(r is not None for r in readings), readings


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

    if min(args.images, args.repeats, args.new_tokens, args.reasoning_tokens) < 1:
        print("error: --images, --repeats, --new-tokens and --reasoning-tokens must be at least 1")
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

        paths = {
            "expected_value": lambda: scorer.score_details(images),
            "paper_format": lambda: _generate_then_parse(scorer, images, args.reasoning_tokens, REASONING_INSTRUCTION, ANSWER_TAG),
            "bare_answer": lambda: _generate_then_parse(scorer, images, args.new_tokens),
        }
        times = _interleaved_times(paths, args.repeats, sync)
        results = {}
        for name, fn in paths.items():
            peak = None
            if cuda:  # a separate, untimed call per path for its peak memory
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                fn()
                sync()
                peak = torch.cuda.max_memory_allocated() / 2**30
            results[name] = (args.images / statistics.median(times[name]), peak)

        n_parsed = {
            "paper_format": _generate_then_parse(scorer, images, args.reasoning_tokens, REASONING_INSTRUCTION, ANSWER_TAG)[0],
            "bare_answer": _generate_then_parse(scorer, images, args.new_tokens)[0],
        }
        tokens = {"paper_format": args.reasoning_tokens, "bare_answer": args.new_tokens}
        ev_ips, ev_peak = results["expected_value"]
        mode = (f"prompt+image pass of {args.images} rows, then {2 * args.images} answer-prefix rows on its cache"
                if scorer.config.share_prefix and scorer._shares_vision() else f"one forward pass of {2 * args.images} rows")
        print(f"expected_value: {ev_ips:.2f} images/s ({mode}; every image gets a reading)")
        for name in ("paper_format", "bare_answer"):
            print(f"generate_then_parse[{name}]: {results[name][0]:.2f} images/s ({tokens[name]} new tokens per image; "
                  f"parsed {n_parsed[name]}/{args.images} answers)")
        if cuda:
            for name, (_, peak) in results.items():
                print(f"peak_memory_{name}_gib={peak:.2f}")
        print(f"ev_vs_bare_answer_speedup={ev_ips / results['bare_answer'][0]:.2f}")
        print(f"ev_vs_generate_speedup={ev_ips / results['paper_format'][0]:.2f}")
    return 0
