"""What a reading costs per image: the digit readout against judges that write their answer (presets).

Measured on one loaded judge, the same images, median of ``repeats`` calls per path (alternating):

* ``digits``: the scorer's expected-value digit readout (no generated tokens: the prompt and image in
  one pass, then two one-token answer rows on its cache);
* ``paper``: the paper preset, greedy, at most ``cap`` new tokens per answer (the reasoning reward's
  default for a GRPO adapter is its training cap), one answer per image;
* ``paper_2x``: the same at twice the cap — the control: a random judge never stops early, so its cost
  must follow the generated tokens (ratio ≈ 2 when generation dominates);
* ``eemo-logic``: two questions per image (one per axis), each at most ``cap`` new tokens;
* ``exact_expected_pass``: what ``reading = "exact_expected"`` adds: ten teacher-forced rows per written
  number (two numbers per image for the paper format), timed on scripted answers, since a random judge
  never writes a parsable one. (The default digit-by-digit expected value reuses the distributions
  generation computed: no extra pass.)

The generated tokens per image are counted, so a real-size expectation can be given as a ratio of
tokens (decoding is sequential: each generated token is one more forward step of the language model).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def _median_times(paths: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    for fn in paths.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _scripted_sites(scorer: Any, images: list[Any]) -> list[Any]:
    from ..engines.judge.answer_parsing import parse_answer
    from ..engines.judge.digit_expectation import NumberSite, digit_token_ids, locate_site
    from ..engines.judge.presets import PAPER

    digits = digit_token_ids(scorer.tokenizer)
    ids = scorer.tokenizer.encode("<think>soft light, calm water</think><answer>1.25, -0.50</answer>",
                                  add_special_tokens=False)
    text = scorer.tokenizer.decode(ids, skip_special_tokens=True)
    answer = parse_answer(PAPER, "both", text)
    prompt = scorer._chat(PAPER.questions["both"])
    return [NumberSite(prompt, image, ids, locate_site(scorer.tokenizer, ids, text, number, digits), number)
            for image in images for number in answer.numbers.values()]


def measure_reading_costs(scorer: Any, images: list[Any], cap: int, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per image and generated tokens per image for each path (see the module docstring)."""
    from ..engines.judge.digit_expectation import digit_token_ids, expected_numbers
    from ..engines.judge.generated_reading import SamplingSettings
    from ..engines.judge.preset_judge import GeneratedReadingJudge
    from ..engines.judge.presets import PAPER, load_preset

    judges = {"paper": GeneratedReadingJudge(scorer, PAPER, SamplingSettings(max_new_tokens=cap)),
              "paper_2x": GeneratedReadingJudge(scorer, PAPER, SamplingSettings(max_new_tokens=2 * cap)),
              "eemo-logic": GeneratedReadingJudge(scorer, load_preset("eemo-logic"), SamplingSettings(max_new_tokens=cap))}
    sites, digits = _scripted_sites(scorer, images), digit_token_ids(scorer.tokenizer)
    tokens: dict[str, float] = {"digits": 0.0, "exact_expected_pass": 0.0}
    parsed: dict[str, float] = {}

    def reading(name: str) -> Callable[[], Any]:
        def run() -> None:
            readings = judges[name].read_details(images)
            tokens[name] = sum(r.generated_tokens for r in readings) / len(images)
            parsed[name] = sum(len(r.texts) - r.unparsable_answers for r in readings) / max(1, sum(len(r.texts) for r in readings))
        return run

    paths = {"digits": lambda: scorer.score_details(images), **{name: reading(name) for name in judges},
             "exact_expected_pass": lambda: expected_numbers(scorer, sites, digits)}
    times = _median_times(paths, repeats)
    return {name: {"s_per_image": t / len(images), "tokens_per_image": tokens.get(name, 0.0),
                   "parsed_share": parsed.get(name, float("nan"))} for name, t in times.items()}


def print_reading_costs(costs: dict[str, dict[str, float]], cap: int, description: str) -> None:
    how = {"digits": "digit readout: no generated tokens (prompt + image once, 2 answer rows on its cache)",
           "paper": f"paper preset, greedy, cap {cap}", "paper_2x": f"paper preset, greedy, cap {2 * cap} (control)",
           "eemo-logic": f"eemo-logic preset, 2 questions, cap {cap} each",
           "exact_expected_pass": "reading exact_expected adds: 2 written numbers x 10 teacher-forced rows"}
    print(f"reading cost per image ({description}):")
    for name, c in costs.items():
        extra = "" if name in ("digits", "exact_expected_pass") else (
            f", {c['tokens_per_image']:.1f} generated tokens/image, answers parsed {c['parsed_share']:.0%}")
        print(f"  {name:20s} {1000 * c['s_per_image']:8.2f} ms/image ({how[name]}{extra})")
    digits = costs["digits"]["s_per_image"]
    print(f"paper_generated_tokens_per_image={costs['paper']['tokens_per_image']:.1f}")
    print(f"exact_expected_pass_over_digits_time={costs['exact_expected_pass']['s_per_image'] / digits:.2f}")
    print(f"paper_2x_cap_over_paper_time={costs['paper_2x']['s_per_image'] / costs['paper']['s_per_image']:.2f}")
    print(f"paper_over_digits_time={costs['paper']['s_per_image'] / digits:.2f}")


__all__ = ["measure_reading_costs", "print_reading_costs"]
