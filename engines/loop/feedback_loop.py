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
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..emotion_space import VA, va_distance, va_reward
from ..generation.protocol import GenerationRequest, Generator
from ..progress import ProgressCallback, report
from .refiner import FallbackRefiner, Refiner, split_prompt
from ..judge.scoring import EmotionScorer
from .steering import SecantController

#: Optional quality term: images [B,H,W,3] in 0..1 → one score per image in [0, 1].
QualityFn = Callable[[torch.Tensor], Sequence[float]]

SEED_MODULUS = 2**64


def candidate_seed(seed: int, round_index: int, index: int, candidates: int) -> int:
    """Seed of candidate ``index`` in round ``round_index`` (0-based) of a constant schedule:
    consecutive from ``seed``, like ComfyUI's batch seeds, so any candidate can be re-made in a
    plain KSampler (the loop numbers candidates of any schedule consecutively)."""
    return (int(seed) + round_index * candidates + index) % SEED_MODULUS


@dataclass
class LoopConfig:
    """Schedule and sampling settings of one loop run. Defaults are our benchmarked schedule.

    rounds / candidates: at most ``rounds × candidates`` generated images.
    tolerance: stop once the best reading is this close to the target (``va_distance``, 0..6).
    min_improvement: stop when a round brings neither the best distance nor the round's mean
      distance down by this much (0 = never).
    initial_prompt: ``"descriptors"`` adds target mood/light/motion phrases to the user's subject
      for round 1; ``"as_is"`` sends the user's prompt unchanged (the paper's start).
    quality_weight: weight of the optional quality term in the selection score
      ``reward + quality_weight × quality``.
    steer_on: the reading the refiner corrects: ``"mean"`` of the round's candidates (the prompt's
      effect with seed luck averaged out) or the round's ``"best"`` candidate. The refiner always
      sees the round's best image.
    controller: ``"secant"`` (fit the generator's response, aim where it predicts the target) or
      ``"integral"`` (the refiner's fixed-gain step). Only refiners that take a ``steer`` keyword
      (the descriptor fallback) can follow the secant controller; others write their own prompt.
    max_evaluations: most judge evaluations (scored candidates + images shown to an LVLM refiner)
      per run; 0 = no cap beyond ``rounds × candidates``.
    confidence: the tolerance stop needs ``best distance + confidence × σ̂ ≤ tolerance``
      (σ̂: pooled within-round spread of the readings; 0 = trust a single reading).
    """

    rounds: int = 6
    candidates: int = 2
    tolerance: float = 0.4
    min_improvement: float = 0.0
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    width: int = 512
    height: int = 512
    negative_prompt: str = ""
    adapter_strength: float = 1.0
    initial_prompt: str = "descriptors"
    quality_weight: float = 0.0
    steer_on: str = "mean"
    generator_batch_size: int = 0  # 0 = the whole round in one generate call
    controller: str = "secant"
    max_evaluations: int = 0
    confidence: float = 0.5
    schedule: tuple = ()  # per-round candidate counts; when given it replaces rounds × candidates
    noise_aware: bool = True  # the secant step shrinks errors the readings' spread cannot resolve

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")
        if not 0.0 <= self.tolerance <= 6.0:
            raise ValueError(f"tolerance is a V-A distance in [0, 6], got {self.tolerance}")
        if self.min_improvement < 0:
            raise ValueError(f"min_improvement must be >= 0, got {self.min_improvement}")
        if self.initial_prompt not in ("descriptors", "as_is"):
            raise ValueError(f"initial_prompt must be 'descriptors' or 'as_is', got {self.initial_prompt!r}")
        if self.steer_on not in ("mean", "best"):
            raise ValueError(f"steer_on must be 'mean' or 'best', got {self.steer_on!r}")
        if self.generator_batch_size < 0:
            raise ValueError("generator_batch_size must be >= 0 (0 = whole round)")
        if self.controller not in ("secant", "integral"):
            raise ValueError(f"controller must be 'secant' or 'integral', got {self.controller!r}")
        if self.max_evaluations < 0:
            raise ValueError(f"max_evaluations must be >= 0 (0 = rounds × candidates), got {self.max_evaluations}")
        if self.confidence < 0:
            raise ValueError(f"confidence must be >= 0, got {self.confidence}")
        self.schedule = tuple(int(n) for n in self.schedule)
        if self.schedule:
            if any(n < 1 for n in self.schedule):
                raise ValueError(f"schedule holds candidates per round, each >= 1; got {self.schedule}")
            self.rounds, self.candidates = len(self.schedule), max(self.schedule)

    def candidates_in_round(self, round_index: int) -> int:
        """Candidates planned for round ``round_index`` (0-based), before any budget cut."""
        return self.schedule[round_index] if self.schedule else self.candidates

    @property
    def evaluation_budget(self) -> int:
        """Most candidates the run may score (``max_evaluations`` or ``rounds × candidates``)."""
        full = sum(self.schedule) if self.schedule else self.rounds * self.candidates
        return min(full, self.max_evaluations) if self.max_evaluations else full

    @classmethod
    def paper(cls, **overrides) -> "LoopConfig":
        """The paper's fixed schedule: 3 rounds × 8 candidates, no early stop, the refiner's own
        fixed-gain correction (same first prompt as ours unless ``initial_prompt`` is overridden)."""
        settings = dict(rounds=3, candidates=8, tolerance=0.0, min_improvement=0.0, controller="integral",
                        max_evaluations=0, confidence=0.0)
        settings.update(overrides)
        return cls(**settings)


@dataclass
class CandidateRecord:
    round: int  # 1-based
    index: int  # 0-based within the round
    prompt: str
    seed: int
    valence: float
    arousal: float
    reward: float
    distance: float
    quality: Optional[float] = None
    score: float = 0.0  # what selection maximises: reward (+ quality_weight × quality)
    image_index: int = 0  # position in LoopResult.images


@dataclass
class RoundRecord:
    round: int
    prompt: str
    candidates: list[CandidateRecord]
    best_index: int  # best of this round
    best_so_far: tuple[int, int]  # (round, index) of the best candidate up to this round
    best_so_far_reward: float
    best_so_far_distance: float
    mean_valence: float
    mean_arousal: float
    mean_distance: float
    seconds: float
    feedback: str = ""
    refined_prompt: Optional[str] = None  # prompt for the next round (None: none was asked for)
    refiner_used_fallback: Optional[bool] = None
    refiner_reason: str = ""
    steer: Optional[tuple[float, float]] = None  # the V-A point this round's prompt was written for, when known


@dataclass
class LoopCounts:
    generator_images: int = 0
    generator_calls: int = 0
    scorer_calls: int = 0
    scorer_images: int = 0
    refiner_calls: int = 0
    refiner_lvlm_images: int = 0  # images the LVLM read while writing feedback (0 for the fallback)

    @property
    def image_evaluations(self) -> int:
        """Images the judge looked at: scored candidates plus images shown to the LVLM refiner."""
        return self.scorer_images + self.refiner_lvlm_images


@dataclass
class LoopResult:
    target: VA
    base_prompt: str
    config: LoopConfig
    rounds: list[RoundRecord] = field(default_factory=list)
    best: Optional[CandidateRecord] = None
    images: Optional[torch.Tensor] = None  # every candidate of the recorded rounds, in order
    final_prompt: str = ""
    stop_reason: str = ""
    cancelled: bool = False
    counts: LoopCounts = field(default_factory=LoopCounts)
    timings: dict = field(default_factory=dict)
    generator_name: str = ""
    scorer_name: str = ""
    refiner_name: str = ""
    scorer_is_heuristic: bool = False

    @property
    def best_image(self) -> Optional[torch.Tensor]:
        if self.best is None or self.images is None:
            return None
        return self.images[self.best.image_index : self.best.image_index + 1]

    @property
    def best_rewards(self) -> list[float]:
        return [r.best_so_far_reward for r in self.rounds]

    def to_dict(self) -> dict:
        counts = asdict(self.counts)
        counts["image_evaluations"] = self.counts.image_evaluations
        return {
            "target": {"valence": self.target.valence, "arousal": self.target.arousal},
            "base_prompt": self.base_prompt,
            "final_prompt": self.final_prompt,
            "stop_reason": self.stop_reason,
            "cancelled": self.cancelled,
            "best": asdict(self.best) if self.best else None,
            "rounds": [asdict(r) for r in self.rounds],
            "counts": counts,
            "timings": dict(self.timings),
            "config": asdict(self.config),
            "components": {
                "generator": self.generator_name,
                "scorer": self.scorer_name,
                "scorer_is_heuristic": self.scorer_is_heuristic,
                "refiner": self.refiner_name,
            },
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def progress_units(config: LoopConfig) -> int:
    """Progress units of a full run: per round, one per image plus one for scoring (a node sizes
    its progress bar with this; an early stop shrinks the total to what was done)."""
    images, rounds, planned = config.evaluation_budget, 0, 0
    while planned < images and rounds < config.rounds:
        planned += config.candidates_in_round(rounds)
        rounds += 1
    return images + rounds


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
