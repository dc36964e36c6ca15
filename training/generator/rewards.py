"""Rewards for GRPO: emotion accuracy (LVLM or colour heuristic), a toy brightness reward, CLIP quality.

Every reward maps ``(images [B,H,W,3] in 0..1, prompts, targets [B,2] V-A)`` to a float tensor ``[B]``
(higher is better). :class:`CompositeReward` sums them with weights after one normalisation rule
shared by all terms (default: each term's within-group spread) and reports each term's share of the
advantage variance; :class:`AsyncRewardRunner` scores a micro-batch on a worker thread while the next one
is being sampled, so the reward model is off the critical path.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence, Union

import torch

from ...engines.emotion_space import VA_MAX, VA_MIN, va_reward_tensor
from .config import check_one_normalization
from .config_checks import LOW_MASS_RULES


@dataclass
class FlaggedReward:
    """A reward's values [B] with per-sample flags (bool [B]) that the trainer counts and logs."""

    values: torch.Tensor
    flags: dict[str, torch.Tensor] = field(default_factory=dict)


class Reward(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 targets: torch.Tensor) -> Union[torch.Tensor, FlaggedReward]:
        ...


class ColorVAReward:
    """``va_reward`` of the colour-heuristic reading against the target (weight-free; a heuristic)."""

    name = "color_va"

    def __init__(self) -> None:
        from ...engines.judge.color_scorer import ColorHeuristicScorer

        self.scorer = ColorHeuristicScorer()

    def __call__(self, images, prompts, targets):
        v, a = self.scorer.score_tensor(images.float())
        t = targets.float().to(v.device)
        return va_reward_tensor(v, a, t[:, 0], t[:, 1]).float().cpu()


class BrightnessReward:
    """Toy reward: mean brightness mapped to [-3, 3] should equal the target valence (tests, benchmarks)."""

    name = "brightness"

    def __call__(self, images, prompts, targets):
        level = VA_MIN + (VA_MAX - VA_MIN) * images.float().mean(dim=(1, 2, 3))
        return (1.0 - (level - targets[:, 0].float()).abs() / (VA_MAX - VA_MIN)).cpu()


class LVLMVAReward:
    """``va_reward`` of the LVLM scorer's reading (expected-value digits) against the target.

    A reading whose digit probability mass is below ``LOW_DIGIT_MASS`` was not an answer: the judge's
    continuation went elsewhere (an image with text in it can hijack it), and the expected value rests on
    little mass. With ``low_digit_mass="floor"`` such an image gets the lowest reward, 0 — gaming the
    judge that way never pays; ``"keep"`` scores it as read. Either way it is flagged and counted
    (``reward_flags/<name>/low_digit_mass``).
    """

    name = "lvlm_va"

    def __init__(self, scorer, low_digit_mass: str = "floor") -> None:
        if low_digit_mass not in LOW_MASS_RULES:
            raise ValueError(f"low_digit_mass must be one of {LOW_MASS_RULES}, got {low_digit_mass!r}")
        self.scorer = scorer
        self.low_digit_mass = low_digit_mass

    @classmethod
    def from_path(cls, path: str, device: str = "", dtype: str = "float32", offload: bool = False,
                  quantization: str = "none", images_per_pass: int = 0, adapter: str = "",
                  attention: str = "auto", low_digit_mass: str = "floor", max_pixels: int = 0) -> "LVLMVAReward":
        from ...engines.judge.lvlm_scorer import load_lvlm
        from .reasoning_reward import judge_loading_config  # the one judge config of both LVLM reward kinds

        config = judge_loading_config(path, device, dtype, offload, quantization, images_per_pass, attention,
                                      adapter, max_pixels)
        return cls(load_lvlm(config), low_digit_mass)

    def __call__(self, images, prompts, targets):
        readings = self.scorer.score(images.float().cpu())
        v = torch.tensor([r.valence for r in readings], dtype=torch.float32).clamp(VA_MIN, VA_MAX)
        a = torch.tensor([r.arousal for r in readings], dtype=torch.float32).clamp(VA_MIN, VA_MAX)
        t = targets.float().cpu()
        reward = va_reward_tensor(v, a, t[:, 0], t[:, 1])
        low = torch.tensor([r.low_digit_mass for r in readings], dtype=torch.bool)
        if self.low_digit_mass == "floor":
            reward = torch.where(low, torch.zeros_like(reward), reward)  # 0 = the reward's minimum
        return FlaggedReward(reward, {"low_digit_mass": low})


class CLIPQualityReward:
    """PickScore-style preference: ``logit_scale * cos(image, prompt) / 100`` from a CLIPModel folder.

    Point ``path`` at PickScore (``yuvalkirstain/PickScore_v1`` with the processor of
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` saved next to it) or any CLIP model + processor folder.
    """

    name = "clip_quality"

    def __init__(self, path: str, device: str = "cpu", dtype: str = "float32", offload: bool = False):
        from transformers import AutoProcessor, CLIPModel

        try:
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = CLIPModel.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        except OSError as exc:
            raise FileNotFoundError(
                f"could not load a CLIP model + processor from {path!r}: give a folder holding both "
                "(save_pretrained of CLIPModel and its processor) or a hub id"
            ) from exc
        self.model.requires_grad_(False)
        self.device = torch.device(device or "cpu")
        self.offload = offload
        if not offload:
            self.model.to(self.device)

    @torch.no_grad()
    def __call__(self, images, prompts, targets):
        from ...engines.images import to_pil_list

        if self.offload:
            self.model.to(self.device)
        try:
            inputs = self.processor(text=list(prompts), images=to_pil_list(images), return_tensors="pt",
                                    padding=True, truncation=True)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            img = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.model.dtype))
            txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
            img = _features(img)
            txt = _features(txt)
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            score = self.model.logit_scale.exp() * (img * txt).sum(-1) / 100.0
        finally:
            if self.offload:
                self.model.to("cpu")
        return score.float().cpu()


def _features(out) -> torch.Tensor:
    """transformers 5 may return a model output instead of a bare tensor from get_*_features."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


def _group_centred(value: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """``value`` minus the mean of its group (what GRPO's advantage sees of a reward)."""
    uniq, inverse = torch.unique(group_ids.flatten(), return_inverse=True)
    ones = torch.ones_like(value)
    counts = torch.zeros(len(uniq)).index_add_(0, inverse, ones)
    means = torch.zeros(len(uniq)).index_add_(0, inverse, value) / counts
    return value - means[inverse]


class CompositeReward:
    """Weighted sum of named rewards after ONE normalisation rule shared by every term.

    * ``"group"`` (default): each term is centred in its group and divided by its within-group std
      pooled over the step, so every term enters the advantage with unit within-group spread and the
      weights say directly how much each term counts (uncorrelated terms: share = w² / Σw²);
    * ``"batch"``: each term z-scored over the step's samples (its spread *between* groups counts too);
    * ``"none"``: raw values; weights then mix the terms' native scales (a 0.05-wide LVLM reward next to
      a 0.5-wide CLIP score is mostly CLIP).

    Mixing rules across terms is refused: their weights would not be on one scale.
    """

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float], normalize: Sequence[str] | str = "group"):
        if isinstance(normalize, str):
            normalize = [normalize] * len(rewards)
        if not (len(rewards) == len(weights) == len(normalize)) or not rewards:
            raise ValueError("give one weight and one normalisation per reward, and at least one reward")
        rule = check_one_normalization(list(normalize))
        names = [r.name for r in rewards]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        self.rewards = list(rewards)
        self.weights = [float(w) for w in weights]
        self.normalize = rule

    def score_parts(self, images: torch.Tensor, prompts: Sequence[str], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw per-reward scores for one micro-batch (the part that may run on a worker thread).

        A reward's flags come back beside it as 0/1 tensors named ``<reward>/<flag>``.
        """
        parts = {}
        for name, reward in zip(self.names, self.rewards):
            out = reward(images, prompts, targets)
            flags = out.flags if isinstance(out, FlaggedReward) else {}
            out = out.values if isinstance(out, FlaggedReward) else out
            value = torch.as_tensor(out, dtype=torch.float32).flatten().cpu()
            if value.shape[0] != images.shape[0]:
                raise ValueError(f"reward {name} returned {value.shape[0]} values for {images.shape[0]} images")
            if not torch.isfinite(value).all():
                raise ValueError(f"reward {name} returned NaN/inf; check its model and inputs")
            parts[name] = value
            for flag, mask in flags.items():
                parts[f"{name}/{flag}"] = torch.as_tensor(mask).flatten().float().cpu()
        return parts

    def normalized_parts(self, parts: dict[str, torch.Tensor], group_ids: Optional[torch.Tensor] = None
                         ) -> dict[str, torch.Tensor]:
        """Each term after the shared normalisation, times its weight (over all of a step's samples)."""
        out = {}
        for name, weight in zip(self.names, self.weights):
            value = parts[name].float().flatten()
            if self.normalize == "group":
                if group_ids is None:
                    raise ValueError("normalize='group' needs the samples' group ids")
                centred = _group_centred(value, group_ids.cpu())
                value = centred / (centred.pow(2).mean().sqrt() + 1e-6)
            elif self.normalize == "batch" and value.numel() > 1:
                value = (value - value.mean()) / (value.std(unbiased=False) + 1e-6)
            out[name] = weight * value
        return out

    def pop_stats(self) -> dict[str, float]:
        """Diagnostics the terms keep about their last calls (e.g. unparsable judge answers), by term name."""
        out = {}
        for name, reward in zip(self.names, self.rewards):
            pop = getattr(reward, "pop_stats", None)
            if callable(pop):
                out.update({f"reward_info/{name}/{key}": value for key, value in pop().items()})
        return out

    def combine(self, parts: dict[str, torch.Tensor], group_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sum of weighted, normalised parts over all of a step's samples (normalisation needs the whole step)."""
        return sum(self.normalized_parts(parts, group_ids).values())

    def advantage_shares(self, parts: dict[str, torch.Tensor], group_ids: torch.Tensor) -> dict[str, float]:
        """Each term's share of the within-group variance of the combined reward (what sets the advantages).

        ``share_k = Var_within(w_k·n_k) / Σ_j Var_within(w_j·n_j)`` with ``n`` the normalised term;
        the shares sum to 1 and equal the exact variance split when the terms are uncorrelated.
        """
        weighted = self.normalized_parts(parts, group_ids)
        var = {name: float(_group_centred(v, group_ids.cpu()).pow(2).mean()) for name, v in weighted.items()}
        total = sum(var.values())
        return {name: (v / total if total > 0 else 0.0) for name, v in var.items()}


def build_reward(specs, device: str = "cpu") -> CompositeReward:
    """A :class:`CompositeReward` from ``config.rewards`` (list of RewardSpec)."""
    from .reasoning_reward import LVLMReasoningReward, reading_choice

    rewards = []
    for index, spec in enumerate(specs):
        dev = spec.device or device
        if spec.kind == "color":
            rewards.append(ColorVAReward())
        elif spec.kind == "brightness":
            rewards.append(BrightnessReward())
        elif spec.kind == "lvlm":
            reading_choice(spec, index)  # a GRPO-trained judge adapter is refused here, with the fix
            rewards.append(LVLMVAReward.from_path(spec.path, dev, spec.dtype, spec.offload, spec.quantization,
                                                  spec.images_per_pass, spec.adapter, spec.attention,
                                                  spec.low_digit_mass, spec.max_pixels))
        elif spec.kind == "lvlm_reasoning":
            rewards.append(LVLMReasoningReward.from_spec(spec, dev, index))
        elif spec.kind == "clip_quality":
            rewards.append(CLIPQualityReward(spec.path, dev, spec.dtype, spec.offload))
        else:
            raise ValueError(f"unknown reward kind {spec.kind!r}")
    return CompositeReward(rewards, [s.weight for s in specs], [s.normalize for s in specs])


class AsyncRewardRunner:
    """Score micro-batches on worker threads (``workers=0``: inline) and collect them in order."""

    def __init__(self, reward: CompositeReward, workers: int = 1):
        self.reward = reward
        self.pool: Optional[ThreadPoolExecutor] = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
        self.pending: list[Future | dict] = []

    def submit(self, images: torch.Tensor, prompts: Sequence[str], targets: torch.Tensor) -> None:
        images, targets = images.detach().cpu(), targets.detach().cpu()
        if self.pool is None:
            self.pending.append(self.reward.score_parts(images, prompts, targets))
        else:
            self.pending.append(self.pool.submit(self.reward.score_parts, images, list(prompts), targets))

    def collect(self) -> dict[str, torch.Tensor]:
        """Wait for everything submitted since the last collect; concatenated per reward, in order."""
        results = [p.result() if isinstance(p, Future) else p for p in self.pending]
        self.pending = []
        if not results:
            return {name: torch.zeros(0) for name in self.reward.names}
        return {name: torch.cat([r[name] for r in results]) for name in results[0]}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
