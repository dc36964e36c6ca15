"""GRPO for the judge on the paper's output format (``objective.kind = "grpo"``): rewards, rollouts, loss.

Per image, ``group_size`` completions are sampled with the paper-format instruction
(:data:`..engines.paper_format.REASONING_INSTRUCTION`, through the scorer's own chat template and
encoder): a short reasoning in ``<think></think>``, then ``<answer>V, A</answer>`` on the [-3, 3]
scale the labels use. Each completion gets a **format reward** (1 when the whole text is one
reasoning block and one answer with finite values in range, :func:`..engines.paper_format.parse_paper_answer`;
model text is untrusted: a strict regex, never ``eval``) and an **accuracy reward** (per axis 1
when ``|answer - label| <= epsilon``, averaged over the two axes: 0, 0.5 or 1; 0 without a
well-formed answer): ``reward = accuracy + format_weight * format``. Advantages are group-relative
(:func:`.grpo.group_advantages`, each group's own std, zero-spread groups dropped); the loss is the
PPO-clip term of :func:`.grpo.ppo_clip_loss` per completion token, a token-level mean over the
step, plus ``kl_coef`` times the k3 estimate of the per-token KL to the base model (the LoRA
disabled with peft's ``disable_adapter()``). Log-probs are of the tempered distribution sampled from.

Why not trl's ``GRPOTrainer`` (installable here: trl 1.16): it owns the loop, the prompt building
(from a ``datasets`` dataset) and the checkpoint format, so it would reuse neither the scorer's
prompt/encoder path nor this package's atomic checkpoints and bit-exact resume; the part worth
sharing, the group-advantage and clipped-ratio maths, already lives in :mod:`.grpo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from ...engines.judge import completion_tokens
from ...engines.judge.paper_format import REASONING_INSTRUCTION, parse_paper_answer
from ..grpo import ppo_clip_loss


# --- rewards -------------------------------------------------------------------------------------


@dataclass
class CompletionRewards:
    """Per completion: total ``reward``, ``format_ok`` (bool) and ``accuracy`` (0, 0.5 or 1), all ``[N]``."""

    reward: torch.Tensor
    format_ok: torch.Tensor
    accuracy: torch.Tensor
    answers: list[Optional[tuple[float, float]]] = field(default_factory=list)


def completion_rewards(texts: Sequence[str], labels: torch.Tensor, epsilon: float,
                       format_weight: float) -> CompletionRewards:
    """Format + accuracy-within-``epsilon`` rewards of ``texts`` against ``labels[N, 2]`` (V, A in [-3, 3])."""
    labels = torch.as_tensor(labels, dtype=torch.float32).reshape(-1, 2)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} completions for {len(labels)} labels")
    if not torch.isfinite(labels).all():
        raise ValueError("labels contain NaN/inf: the manifest reader should have refused them")
    answers = [parse_paper_answer(text) for text in texts]
    format_ok = torch.tensor([a is not None for a in answers], dtype=torch.bool)
    accuracy = torch.zeros(len(answers))
    for i, answer in enumerate(answers):
        if answer is not None:
            hits = (torch.tensor(answer) - labels[i]).abs() <= epsilon
            accuracy[i] = hits.float().mean()
    reward = accuracy + format_weight * format_ok.float()
    return CompletionRewards(reward=reward, format_ok=format_ok, accuracy=accuracy, answers=answers)


# --- rollouts ------------------------------------------------------------------------------------


@dataclass
class RolloutChunk:
    """Rows ``start:stop`` of a step's completions, as one forward pass sees them."""

    start: int
    stop: int
    prompt: dict[str, Any]  # the scorer's encoding of the prompt rows (input_ids, attention_mask, pixels, ...)
    completion: torch.Tensor  # [n, T] token ids
    mask: torch.Tensor  # [n, T] bool: tokens up to and including the first end token
    old_logp: Optional[torch.Tensor] = None  # [n, T] when there is more than one update per rollout
    ref_logp: Optional[torch.Tensor] = None  # [n, T] the base model's (LoRA disabled), when kl_coef > 0
    blocked: Optional[torch.Tensor] = None  # ids sampling suppressed: log-probs are of the distribution sampled from


@dataclass
class Rollout:
    chunks: list[RolloutChunk]
    texts: list[str]
    group_ids: torch.Tensor  # [N] image index of each completion
    rewards: CompletionRewards
    refused: int = 0  # completions that carried a blocked (vision/special) token despite suppression: not trained

    @property
    def completion_tokens(self) -> int:
        return int(sum(c.mask.sum() for c in self.chunks))


def end_token_ids(scorer: Any) -> set[int]:
    """The ids that end a completion: the generation config's EOS ids and the tokenizer's."""
    return completion_tokens.end_token_ids(scorer.model, scorer.tokenizer)


def blocked_token_ids(scorer: Any) -> list[int]:
    """Ids a completion must never carry (vision placeholders, other special tokens): suppressed in sampling."""
    return completion_tokens.blocked_token_ids(scorer.model, scorer.tokenizer)


def refuse_blocked(completion: torch.Tensor, mask: torch.Tensor, blocked: Sequence[int],
                   pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows that carry a blocked id inside their completion are refused: all padding, nothing trained.

    Returns ``(completion, mask, refused[N])``. Every position outside the (new) mask becomes
    ``pad_id``: the training forward counts vision placeholders whether attended or not, so no
    blocked id may stay anywhere in the ids it is fed.
    """
    hit = torch.isin(completion, torch.as_tensor(list(blocked), dtype=completion.dtype, device=completion.device))
    refused = (hit & mask).any(dim=1)
    mask = mask & ~refused[:, None]
    return completion.masked_fill(~mask, pad_id), mask, refused


def completion_mask(completion: torch.Tensor, end_ids: set[int]) -> torch.Tensor:
    """``[N, T]`` bool: every token up to and including the first end token (all of a row without one)."""
    is_end = torch.zeros_like(completion, dtype=torch.bool)
    for token in end_ids:
        is_end |= completion == token
    ended_before = torch.cumsum(is_end.long(), dim=1) - is_end.long()  # end tokens strictly before
    return ended_before == 0


def _row_chunks(n_rows: int, rows_per_pass: int) -> list[tuple[int, int]]:
    size = rows_per_pass or n_rows
    return [(start, min(n_rows, start + size)) for start in range(0, n_rows, size)]


def encode_prompts(scorer: Any, images: Sequence[Any], objective: Any) -> list[dict[str, Any]]:
    """The paper-format prompt for every completion row (image ``r // group_size``), one encoding per chunk."""
    group = objective.group_size
    prompt = scorer._chat(REASONING_INSTRUCTION)
    return [scorer._encode([prompt] * (stop - start), [images[r // group] for r in range(start, stop)])
            for start, stop in _row_chunks(len(images) * group, objective.rows_per_pass)]


def build_rollout(scorer: Any, images: Sequence[Any], labels: torch.Tensor, completions: Sequence[torch.Tensor],
                  objective: Any, encodings: Optional[list[dict[str, Any]]] = None,
                  blocked: Optional[list[int]] = None) -> Rollout:
    """A rollout from given completion ids (one ``[n, T]`` tensor per chunk of ``rows_per_pass`` rows).

    ``encodings`` and ``blocked`` (:func:`blocked_token_ids`) are computed here unless the sampler passes its own.
    """
    group = objective.group_size
    n_rows = len(images) * group
    encodings = encodings if encodings is not None else encode_prompts(scorer, images, objective)
    end_ids = end_token_ids(scorer)
    blocked = blocked if blocked is not None else blocked_token_ids(scorer)
    blocked_ids = torch.tensor(blocked, dtype=torch.long)
    chunks, texts, refused = [], [], 0
    for (start, stop), completion, encoded in zip(_row_chunks(n_rows, objective.rows_per_pass), completions,
                                                  encodings, strict=True):
        completion, mask, row_refused = refuse_blocked(completion, completion_mask(completion, end_ids), blocked,
                                                       scorer.tokenizer.pad_token_id)
        refused += int(row_refused.sum())
        for ids, row_mask in zip(completion, mask):  # a refused row reads as "": no format, reward 0
            kept = [int(t) for t, m in zip(ids, row_mask) if m and int(t) not in end_ids]
            texts.append(scorer.tokenizer.decode(kept, skip_special_tokens=True))
        chunks.append(RolloutChunk(start, stop, encoded, completion, mask, blocked=blocked_ids))
    labels = torch.as_tensor(labels, dtype=torch.float32).reshape(-1, 2).repeat_interleave(group, dim=0)
    rewards = completion_rewards(texts, labels, objective.epsilon, objective.format_weight)
    group_ids = torch.arange(len(images)).repeat_interleave(group)
    return Rollout(chunks=chunks, texts=texts, group_ids=group_ids, rewards=rewards, refused=refused)


@torch.no_grad()
def sample_rollout(scorer: Any, images: Sequence[Any], labels: torch.Tensor, objective: Any, seed: int) -> Rollout:
    """Sample ``group_size`` completions per image from the full tempered distribution, seeded by ``seed``.

    The model's own generation defaults (Qwen-VL ships ``top_k=1``, ``top_p=0.001``, a repetition
    penalty) are overridden: GRPO needs samples from exactly the distribution whose log-probs it takes.
    Vision placeholders and other special tokens are suppressed (:func:`blocked_token_ids`): fed back
    into the training forward, an ``<|image_pad|>`` would be an image slot without features.
    """
    encodings = encode_prompts(scorer, images, objective)
    blocked = blocked_token_ids(scorer)
    devices = [scorer.device] if scorer.device.type == "cuda" else []
    completions = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for encoded in encodings:
            generated = scorer.model.generate(
                **encoded, do_sample=True, temperature=objective.temperature, top_k=0, top_p=1.0, min_p=None,
                typical_p=1.0, repetition_penalty=1.0, num_beams=1, max_new_tokens=objective.max_new_tokens,
                pad_token_id=scorer.tokenizer.pad_token_id, suppress_tokens=blocked or None,
            )
            completions.append(generated[:, encoded["input_ids"].shape[1]:])
    return build_rollout(scorer, images, labels, completions, objective, encodings, blocked)


# --- log-probs and the loss ------------------------------------------------------------------------


def token_logprobs(model: Any, chunk: RolloutChunk, temperature: float) -> torch.Tensor:
    """``[n, T]`` log-probability of each completion token under ``model`` at ``temperature`` (fp32)."""
    prompt = chunk.prompt
    n, width = chunk.completion.shape
    completion = chunk.completion.to(prompt["input_ids"].device)
    mask = chunk.mask.to(completion.device)
    inputs = {k: v for k, v in prompt.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if "mm_token_type_ids" in prompt:  # completion tokens are text (type 0)
        inputs["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(completion)], dim=1)
    out = model(input_ids=torch.cat([prompt["input_ids"], completion], dim=1),
                attention_mask=torch.cat([prompt["attention_mask"], mask.long()], dim=1),
                use_cache=False, logits_to_keep=width + 1, **inputs)
    logits = out.logits[:, :-1].float() / temperature  # position P-1+t predicts completion token t
    if chunk.blocked is not None and len(chunk.blocked):  # the suppressed ids have probability 0 when sampling
        blocked = chunk.blocked.to(logits.device)
        logits = logits.index_fill(-1, blocked[blocked < logits.shape[-1]], float("-inf"))
    logp = torch.gather(logits, -1, completion[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logp.masked_fill(~mask, 0.0)  # padding may be a suppressed id (-inf): keep it out of every sum and grad


@torch.no_grad()
def attach_reference_logprobs(model: Any, rollout: Rollout, objective: Any) -> None:
    """Fill ``old_logp`` (only when ``inner_updates > 1``) and ``ref_logp`` (base model, when ``kl_coef > 0``)."""
    for chunk in rollout.chunks:
        if objective.inner_updates > 1:
            chunk.old_logp = token_logprobs(model, chunk, objective.temperature)
        if objective.kl_coef > 0:
            with model.disable_adapter():
                chunk.ref_logp = token_logprobs(model, chunk, objective.temperature)


@dataclass
class GRPOLossStats:
    loss: float
    policy_loss: float
    kl: float  # mean per-token k3 KL to the base model (0 when kl_coef == 0: not computed)
    clipfrac: float
    ratio_max_dev: float  # max |ratio - 1| over all completion tokens: exactly 0 before the first update
    kept_tokens: int


def kl_k3(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Per-token unbiased, non-negative KL(policy || ref) estimate ``exp(r - p) - (r - p) - 1``."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def backward_rollout(model: Any, rollout: Rollout, advantages: torch.Tensor, keep: torch.Tensor,
                     objective: Any) -> GRPOLossStats:
    """Forward + backward every chunk; gradients accumulate into ``.grad`` (call ``zero_grad`` first).

    Policy term: token-level mean over the kept completion tokens of the whole step (each token
    weighs the same however rows fall into chunks); KL term: mean over all completion tokens.
    """
    total_tokens = max(rollout.completion_tokens, 1)
    kept_tokens = int(sum((c.mask & keep[c.start:c.stop, None]).sum() for c in rollout.chunks))
    loss_sum = policy_sum = kl_sum = clip_sum = 0.0
    ratio_dev = 0.0
    for chunk in rollout.chunks:
        logp = token_logprobs(model, chunk, objective.temperature)
        mask = chunk.mask.to(logp.device)
        old = chunk.old_logp if chunk.old_logp is not None else logp.detach()
        adv = advantages[chunk.start:chunk.stop, None].to(logp.device).float().expand_as(logp)
        kept = keep[chunk.start:chunk.stop, None].to(logp.device).expand_as(logp)
        policy, info = ppo_clip_loss(logp[mask], old[mask], adv[mask], objective.clip_range, mask=kept[mask],
                                     normalizer=max(kept_tokens, 1))
        loss = policy
        if objective.kl_coef > 0:
            kl = kl_k3(chunk.ref_logp, logp)[mask].sum() / total_tokens
            loss = loss + objective.kl_coef * kl
            kl_sum += float(kl.detach())
        loss.backward()
        loss_sum += float(loss.detach())
        policy_sum += float(policy.detach())
        clip_sum += info.clipfrac * info.kept
        ratio_dev = max(ratio_dev, info.ratio_max_dev)
    return GRPOLossStats(loss=loss_sum, policy_loss=policy_sum, kl=kl_sum, clipfrac=clip_sum / max(kept_tokens, 1),
                         ratio_max_dev=ratio_dev, kept_tokens=kept_tokens)


__all__ = [
    "CompletionRewards",
    "GRPOLossStats",
    "Rollout",
    "RolloutChunk",
    "attach_reference_logprobs",
    "backward_rollout",
    "blocked_token_ids",
    "build_rollout",
    "completion_mask",
    "completion_rewards",
    "encode_prompts",
    "end_token_ids",
    "kl_k3",
    "refuse_blocked",
    "sample_rollout",
    "token_logprobs",
]
