"""The test-time feedback loop ("self-promotion"): generate, judge, explain, rewrite, repeat.

One engine for the EmoRewardLoop node, the ``emofeedback2 loop``/``demo`` commands and the loop
benchmark. Each round generates ``candidates`` images from one prompt (per-image seeds derived from
the run seed, the round and the index), scores the whole round in ONE batched scorer call, keeps
the best candidate seen so far (so the best reward never decreases), and, unless a stop rule
fires, asks the refiner to rewrite the prompt from the round's best image and its reading.

Where the next prompt aims (``controller``): with ``"secant"`` (default) the loop fits the
generator's response to the steer points of the rounds so far (per-axis gain, cross-talk and bias,
:class:`.steering.SecantController`) and asks the refiner for a prompt written for the steer point
whose predicted mean reading is the target; with ``"integral"`` the refiner takes its own fixed-gain
step (``previous + gain × error``), which is what the paper's loop amounts to.

Stop rules (our default schedule; the paper runs a fixed 3 × 8):
* ``tolerance`` — the best reading is within ``tolerance`` of the target *with a margin for judge
  noise*: ``best distance + confidence × σ̂ ≤ tolerance``, where σ̂ is the pooled spread of the
  readings within rounds (an upper bound on the judge's own noise), so one lucky reading does not stop;
* ``plateau`` — a round brought neither the best nor the mean reading closer by ``min_improvement``;
* ``budget`` — ``max_evaluations`` judge evaluations are spent (the last round is cut to fit);
* ``rounds`` — the round budget is spent.

Cancellation: the progress callback may raise (ComfyUI's interrupt, Ctrl-C). History only ever
holds whole, scored rounds; the exception propagates with the partial :class:`LoopResult` attached
as ``exc.partial_result`` (``cancelled=True``), so callers can still report it.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Callable, Optional, Sequence

import torch

from ..emotion_space import VA, va_distance, va_reward
from ..generation.protocol import GenerationRequest, Generator
from ..judge.scoring import EmotionScorer
from ..progress import ProgressCallback, report
from .loop_config import SEED_MODULUS, LoopConfig, candidate_seed, progress_units
from .loop_records import CandidateRecord, LoopCounts, LoopResult, RoundRecord
from .prompt_text import split_prompt
from .refiner import FallbackRefiner, Refiner
from .steering import SecantController

#: Optional quality term: images [B,H,W,3] in 0..1 → one score per image in [0, 1].
QualityFn = Callable[[torch.Tensor], Sequence[float]]


def first_prompt(prompt: str, target: VA, config: LoopConfig, refiner: Refiner) -> str:
    """Round 1's prompt: the user's as given, or their subject with the target's mood and cues."""
    if config.initial_prompt == "as_is":
        return prompt
    compose = getattr(refiner, "compose", None) or FallbackRefiner().compose
    subject, _ = split_prompt(prompt)
    return compose(subject, target)


class FeedbackLoop:
    """Runs the loop; ``result`` is consistent (whole rounds only) at every moment, even mid-cancel."""

    def __init__(
        self,
        generator: Generator,
        scorer: EmotionScorer,
        refiner: Optional[Refiner] = None,
        config: Optional[LoopConfig] = None,
        quality_fn: Optional[QualityFn] = None,
    ):
        self.generator = generator
        self.scorer = scorer
        self.refiner = refiner if refiner is not None else FallbackRefiner()
        self.config = config or LoopConfig()
        self.quality_fn = quality_fn
        self.result: Optional[LoopResult] = None

    # -- one round's pieces -----------------------------------------------------------------------

    def _generate(self, prompt: str, seeds: list[int], target: VA, progress: ProgressCallback) -> torch.Tensor:
        cfg = self.config
        batch = cfg.generator_batch_size or len(seeds)
        chunks = []
        for start in range(0, len(seeds), batch):
            chunk = seeds[start : start + batch]
            request = GenerationRequest(
                prompts=[prompt] * len(chunk),
                seeds=chunk,
                targets=[target] * len(chunk),
                negative_prompt=cfg.negative_prompt,
                width=cfg.width,
                height=cfg.height,
                steps=cfg.steps,
                cfg=cfg.cfg,
                adapter_strength=cfg.adapter_strength,
            )

            def inner(done: int, total: int, start: int = start, n: int = len(chunk)) -> None:
                fraction = min(1.0, done / total) if total else 1.0
                progress(start + int(round(fraction * n)))

            images = self.generator.generate(request, progress=inner)
            self.result.counts.generator_calls += 1
            self.result.counts.generator_images += len(chunk)
            if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != len(chunk):
                raise RuntimeError(
                    f"generator {getattr(self.generator, 'name', '?')} returned "
                    f"{getattr(images, 'shape', type(images).__name__)} for {len(chunk)} prompts; expected [B,H,W,3]"
                )
            chunks.append(images.detach().float().cpu())
            progress(start + len(chunk))
        return torch.cat(chunks, dim=0)

    def _score(self, images: torch.Tensor):
        readings = self.scorer.score(images)
        self.result.counts.scorer_calls += 1
        self.result.counts.scorer_images += images.shape[0]
        if len(readings) != images.shape[0]:
            raise RuntimeError(f"scorer {self.scorer.name} returned {len(readings)} readings for {images.shape[0]} images")
        quality = list(self.quality_fn(images)) if self.quality_fn is not None else None
        return readings, quality

    # -- the loop ---------------------------------------------------------------------------------

    def run(
        self,
        prompt: str,
        target: VA,
        progress: Optional[ProgressCallback] = None,
        on_round: Optional[Callable[["LoopResult", torch.Tensor], None]] = None,
    ) -> LoopResult:
        """Run the loop. ``on_round(result, images)`` is called after each finished round (its refinement
        filled in) is committed to ``result``, with that round's images; it may write outputs (so a later
        failure loses nothing) or raise to cancel."""
        cfg = self.config
        if not isinstance(target, VA):
            raise TypeError(f"target must be an emotion_space.VA, got {type(target).__name__}")
        if not prompt or not prompt.strip():
            raise ValueError("prompt is empty: describe the subject of the image (e.g. 'a lighthouse on a cliff')")
        self.result = result = LoopResult(
            target=target,
            base_prompt=prompt,
            config=cfg,
            generator_name=getattr(self.generator, "name", type(self.generator).__name__),
            scorer_name=getattr(self.scorer, "name", type(self.scorer).__name__),
            refiner_name=getattr(self.refiner, "name", type(self.refiner).__name__),
            scorer_is_heuristic=bool(getattr(self.scorer, "is_heuristic", False)),
        )
        total = progress_units(cfg)
        done_units = 0
        started = time.perf_counter()
        seconds = {"generate": 0.0, "score": 0.0, "refine": 0.0}
        image_chunks: list[torch.Tensor] = []
        current = first_prompt(prompt, target, cfg, self.refiner)
        steer: Optional[VA] = target if cfg.initial_prompt == "descriptors" else None
        controller = SecantController() if cfg.controller == "secant" else None
        lvlm_reads = getattr(self.refiner, "lvlm", None) is not None  # each refinement costs an evaluation
        result.final_prompt = current
        try:
            for r in range(cfg.rounds):
                n = min(cfg.candidates_in_round(r), cfg.evaluation_budget - result.counts.scorer_images)
                if cfg.max_evaluations:
                    n = min(n, cfg.max_evaluations - result.counts.image_evaluations)
                if n < 1:
                    result.stop_reason = "budget"
                    break
                base = done_units
                round_started = time.perf_counter()
                report(progress, base, total)
                seeds = [(cfg.seed + result.counts.generator_images + i) % SEED_MODULUS for i in range(n)]
                t0 = time.perf_counter()
                images = self._generate(current, seeds, target, lambda done: report(progress, base + done, total))
                seconds["generate"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                readings, quality = self._score(images)
                seconds["score"] += time.perf_counter() - t0

                offset = sum(chunk.shape[0] for chunk in image_chunks)
                records = []
                for i, (seed, reading) in enumerate(zip(seeds, readings)):
                    point = reading.point
                    reward = va_reward(point, target)
                    q = None if quality is None else float(quality[i])
                    records.append(
                        CandidateRecord(
                            round=r + 1, index=i, prompt=current, seed=seed,
                            valence=point.valence, arousal=point.arousal, reward=reward,
                            distance=va_distance(point, target), quality=q,
                            score=reward + (cfg.quality_weight * q if q is not None else 0.0),
                            image_index=offset + i,
                        )
                    )
                round_best = max(range(len(records)), key=lambda i: (records[i].score, -i))
                mean = VA.clamped(sum(c.valence for c in records) / len(records), sum(c.arousal for c in records) / len(records))
                previous_best = result.best
                if previous_best is None or records[round_best].score > previous_best.score:
                    result.best = records[round_best]
                record = RoundRecord(
                    round=r + 1, prompt=current, candidates=records, best_index=round_best,
                    best_so_far=(result.best.round, result.best.index),
                    best_so_far_reward=result.best.reward, best_so_far_distance=result.best.distance,
                    mean_valence=mean.valence, mean_arousal=mean.arousal, mean_distance=va_distance(mean, target),
                    seconds=time.perf_counter() - round_started, steer=steer.as_tuple() if steer is not None else None,
                )
                # Commit the whole round at once: images, record and best move together.
                image_chunks.append(images)
                result.images = torch.cat(image_chunks, dim=0)
                result.rounds.append(record)
                done_units = base + n + 1
                report(progress, done_units, total)
                if controller is not None and steer is not None:
                    controller.observe(steer, mean, n)

                stop = self._stop_reason(result, previous_best, r)
                if not stop and lvlm_reads and cfg.max_evaluations and \
                        cfg.max_evaluations - result.counts.image_evaluations < 2:
                    stop = "budget"  # no evaluation left for both a refinement and a candidate
                if stop:
                    result.stop_reason = stop
                    if on_round is not None:
                        on_round(result, images)
                    break
                best = records[round_best]
                measured = mean if cfg.steer_on == "mean" else VA.clamped(best.valence, best.arousal)
                extra = {}
                if controller is not None and steer is not None and self._takes_steer():
                    extra["steer"] = controller.next_steer(target, current=steer, noise=self._noise_bound(result) if cfg.noise_aware else 0.0)
                t0 = time.perf_counter()
                refinement = self.refiner.refine(
                    images[round_best : round_best + 1], current, measured, target,
                    subject=prompt, previous_steer=steer, **extra,
                )
                seconds["refine"] += time.perf_counter() - t0
                result.counts.refiner_calls += 1
                if lvlm_reads:  # the LVLM read the image
                    result.counts.refiner_lvlm_images += 1
                record.feedback = refinement.feedback
                record.refined_prompt = refinement.prompt
                record.refiner_used_fallback = refinement.used_fallback
                record.refiner_reason = refinement.reason
                current = refinement.prompt
                steer = VA.clamped(*refinement.steer) if refinement.steer is not None else None
                if on_round is not None:
                    on_round(result, images)
        except BaseException as exc:
            # Not finished: cancelled by the user (ComfyUI interrupt, Ctrl-C) or failed.
            result.cancelled = True
            interrupted = isinstance(exc, KeyboardInterrupt) or "Interrupt" in type(exc).__name__
            result.stop_reason = "cancelled" if interrupted else f"error: {type(exc).__name__}"
            self._finish(result, seconds, started)
            try:
                exc.partial_result = result  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover - exceptions with __slots__
                pass
            raise
        self._finish(result, seconds, started)
        # An early stop ends the bar at what was done, and says so by shrinking its total to match.
        report(progress, done_units, done_units)
        return result

    def _takes_steer(self) -> bool:
        """Whether the refiner accepts a ``steer`` keyword (the controller's steer point)."""
        try:
            return "steer" in inspect.signature(self.refiner.refine).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            return False

    def _noise_bound(self, result: LoopResult) -> float:
        """Pooled within-round standard deviation of the readings (both axes): seed variation plus
        judge noise, so an upper bound on the judge's own noise. 0 before any round had 2 candidates."""
        squares, dof = 0.0, 0
        for record in result.rounds:
            if len(record.candidates) < 2:
                continue
            for key, mean in (("valence", record.mean_valence), ("arousal", record.mean_arousal)):
                squares += sum((getattr(c, key) - mean) ** 2 for c in record.candidates)
                dof += len(record.candidates) - 1
        return math.sqrt(squares / dof) if dof else 0.0

    def _stop_reason(self, result: LoopResult, previous_best: Optional[CandidateRecord], r: int) -> str:
        cfg = self.config
        best = result.best
        if cfg.tolerance > 0 and best.distance + cfg.confidence * self._noise_bound(result) <= cfg.tolerance:
            return "tolerance"
        if r + 1 >= cfg.rounds:
            return "rounds"
        if result.counts.scorer_images >= cfg.evaluation_budget:
            return "budget"
        if cfg.min_improvement > 0 and previous_best is not None and len(result.rounds) >= 2:
            # Plateau: neither the best image nor the round's mean reading (what the prompt does)
            # came closer by min_improvement — more rounds of the same would be wasted.
            best_gain = previous_best.distance - best.distance
            mean_gain = result.rounds[-2].mean_distance - result.rounds[-1].mean_distance
            if best_gain < cfg.min_improvement and mean_gain < cfg.min_improvement:
                return "plateau"
        return ""

    @staticmethod
    def _finish(result: LoopResult, seconds: dict, started: float) -> None:
        if result.best is not None:
            result.final_prompt = result.best.prompt
        result.timings = {key: round(value, 4) for key, value in seconds.items()}
        result.timings["total"] = round(time.perf_counter() - started, 4)


def run_feedback_loop(
    generator: Generator,
    scorer: EmotionScorer,
    refiner: Optional[Refiner],
    prompt: str,
    target: VA,
    config: Optional[LoopConfig] = None,
    progress: Optional[ProgressCallback] = None,
    quality_fn: Optional[QualityFn] = None,
    on_round: Optional[Callable[["LoopResult", torch.Tensor], None]] = None,
) -> LoopResult:
    """Run the loop once; see :class:`FeedbackLoop` (a raised cancel carries ``partial_result``)."""
    return FeedbackLoop(generator, scorer, refiner, config, quality_fn).run(prompt, target, progress, on_round=on_round)


__all__ = [
    "CandidateRecord", "FeedbackLoop", "LoopConfig", "LoopCounts", "LoopResult", "QualityFn", "RoundRecord",
    "SEED_MODULUS", "candidate_seed", "first_prompt", "progress_units", "run_feedback_loop",
]
