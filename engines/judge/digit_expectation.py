"""An expected value from the digits a judge wrote: ``0.6523`` read as a distribution, not as text.

After its reasoning the judge writes a decimal number (EEmo-Logic: ``Valence: 0.6523``; the paper's
format: ``-1.25``). The text is one sample; the model's next-token distributions at the number's digits
say how sure it was. The sign and integer part stay as written (the reasoning and the format fix them);
the fraction is read from the distributions at its digit positions. Two readings:

**Digit by digit** (``reading = "expected"``, the default; free): while the answer is generated, a
logits processor keeps, at every step, the scores of the ten digit tokens and the log-normaliser
(:class:`DigitScores`: the distribution the decoder chose from, after the checkpoint's own processors
such as a repetition penalty, before temperature). Then

    E[frac] = sum_k 10^-k * E[d_k | the digits written before position k]

over the written fractional digits and the position after them (a non-digit there — the number ended —
counts as 0; the first fractional digit is renormalised over the digits, since a digit must follow the
point). The first fractional digit, which carries nine tenths of the range, is read exactly given the
reasoning; every later digit is conditioned on the digits actually written before it rather than
averaged over them, which can move the result by less than 0.1 of the unit (0.6 on [-3, 3] for a
[0, 1] scale) in the worst case — when the judge hesitates between two first digits — and by nothing
when it is sure of them. No extra forward pass.

**Exact to the second decimal** (``reading = "exact_expected"``): ten teacher-forced rows per number, one
per first fractional digit ``d1``, each giving ``E[d2 | d1]``:

    E[frac] = sum_d1 p(d1) * (d1 / 10 + E[d2 | d1] / 100)  +  the written digits after the second,

within 0.01 of the model's exact conditional expectation (0.06 on [-3, 3] for [0, 1]). It costs ten
forward passes of prompt + image + completion per number: ``bench judge --cost`` measures it.

Both need one token per digit (Qwen-VL's tokenizer writes them so) and a fractional part; otherwise the
parsed number is the reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from .answer_parsing import ParsedNumber, fraction_digits


@dataclass(frozen=True)
class NumberSite:
    """One written number to read: the prompt row it answers, its completion and where its digits are."""

    prompt: str  # the chat-formatted prompt text (with the image placeholder)
    image: Any  # the PIL image of that prompt
    completion: list[int]  # the generated ids (no end token)
    first_fraction_token: int  # index in ``completion`` of the first fractional digit
    number: ParsedNumber


@dataclass(frozen=True)
class ExpectedNumber:
    value: float  # on the preset's scale, before clamping
    digit_mass: float  # probability on the ten digits at the first fractional position (full vocabulary)


class DigitScores:
    """A logits processor that records, per generation step, the ten digit tokens' scores and the log-normaliser.

    It changes nothing (it returns the scores it gets). ``digits()`` gives ``[rows, steps, 10]`` and
    ``log_norm()`` ``[rows, steps]``: step ``t`` is the distribution generated token ``t`` was chosen from.
    """

    def __init__(self, digit_ids: Sequence[int]):
        self.ids = torch.tensor(list(digit_ids))
        self._digits: list[torch.Tensor] = []
        self._norm: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        values = scores.float()  # kept on the device until the end: no host sync per generated token
        self._digits.append(values[:, self.ids.to(values.device)])
        self._norm.append(torch.logsumexp(values, dim=-1))
        return scores

    def digits(self) -> torch.Tensor:
        return torch.stack(self._digits, dim=1).cpu() if self._digits else torch.zeros(0, 0, 10)

    def log_norm(self) -> torch.Tensor:
        return torch.stack(self._norm, dim=1).cpu() if self._norm else torch.zeros(0, 0)


def digit_by_digit(number: ParsedNumber, first_fraction_token: int, digits: torch.Tensor,
                   log_norm: torch.Tensor) -> ExpectedNumber:
    """The digit-by-digit expected value of ``number`` from one row's recorded scores (``[steps, 10]``, ``[steps]``)."""
    sign, integer, _ = fraction_digits(number)
    written = number.text.partition(".")[2]
    values = torch.arange(10, dtype=torch.float32)
    fraction, mass = 0.0, 0.0
    for j in range(len(written) + 1):  # the written fractional digits and the position after them
        step = first_fraction_token + j
        if step >= digits.shape[0]:
            break
        if j == 0:
            probs = torch.softmax(digits[step], dim=-1)
            mass = float(torch.exp(torch.logsumexp(digits[step], -1) - log_norm[step]))
        else:
            probs = torch.exp(digits[step] - log_norm[step])  # a non-digit (the number ended) counts as 0
        fraction += float((probs * values).sum()) / 10 ** (j + 1)
    return ExpectedNumber(value=sign * (int(integer or "0") + fraction), digit_mass=mass)


def digit_token_ids(tokenizer: Any) -> Optional[list[int]]:
    """Ids of ``0``…``9`` when each digit is one token of ``tokenizer``, else ``None`` (no expected value)."""
    ids = []
    for digit in "0123456789":
        encoded = tokenizer.encode(digit, add_special_tokens=False)
        if len(encoded) != 1:
            return None
        ids.append(int(encoded[0]))
    return ids


def locate_site(tokenizer: Any, completion: Sequence[int], text: str, number: ParsedNumber,
                digit_ids: Sequence[int]) -> Optional[int]:
    """Token index of ``number``'s first fractional digit in ``completion`` (decoded to ``text``), or ``None``.

    Binary search on the decoded length of completion prefixes; the token found must be exactly that digit.
    """
    _, _, char = fraction_digits(number)
    if char < 0 or char >= len(text) or not text[char].isdigit():
        return None
    lo, hi = 0, len(completion)
    while lo < hi:  # the smallest k whose decoded prefix reaches past the digit's position
        mid = (lo + hi) // 2
        if len(tokenizer.decode(list(completion[:mid + 1]), skip_special_tokens=True)) > char:
            hi = mid
        else:
            lo = mid + 1
    if lo >= len(completion) or int(completion[lo]) != digit_ids[int(text[char])]:
        return None
    if len(tokenizer.decode(list(completion[:lo]), skip_special_tokens=True)) != char:
        return None
    return lo


def _branch_rows(lvlm: Any, sites: Sequence[NumberSite], digit_ids: Sequence[int]) -> dict[str, Any]:
    """Ten left-padded rows per site: prompt + image + completion before the digit + each digit ``0``…``9``."""
    encoded = lvlm._encode([s.prompt for s in sites for _ in digit_ids], [s.image for s in sites for _ in digit_ids])
    ids, mask = encoded["input_ids"], encoded["attention_mask"].bool()
    types = encoded.get("mm_token_type_ids")
    rows, row_types = [], []
    for r in range(ids.shape[0]):
        site = sites[r // len(digit_ids)]
        suffix = torch.tensor(list(site.completion[:site.first_fraction_token]) + [digit_ids[r % len(digit_ids)]],
                              dtype=ids.dtype, device=ids.device)
        rows.append(torch.cat([ids[r][mask[r]], suffix]))
        if types is not None:
            row_types.append(torch.cat([types[r][mask[r]], torch.zeros_like(suffix)]))  # text tokens: type 0
    width = max(len(row) for row in rows)
    pad = lvlm.tokenizer.pad_token_id
    batch = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    batch["input_ids"] = torch.stack([torch.cat([row.new_full((width - len(row),), pad), row]) for row in rows])
    batch["attention_mask"] = torch.stack(
        [torch.cat([row.new_zeros(width - len(row)), row.new_ones(len(row))]) for row in rows])
    if types is not None:
        batch["mm_token_type_ids"] = torch.stack([torch.cat([t.new_zeros(width - len(t)), t]) for t in row_types])
    return batch


@torch.no_grad()
def expected_numbers(lvlm: Any, sites: Sequence[NumberSite], digit_ids: Sequence[int]) -> list[ExpectedNumber]:
    """The expected value of every site's number exact to the second decimal (ten rows each, one forward pass)."""
    if not sites:
        return []
    batch = _branch_rows(lvlm, sites, digit_ids)
    logits = lvlm.model(**batch, use_cache=False, logits_to_keep=2).logits.float()  # [10·S, 2, vocab]
    digits = torch.tensor(digit_ids, device=logits.device)
    values = torch.arange(10, dtype=torch.float32, device=logits.device)
    out = []
    for s, site in enumerate(sites):
        block = logits[s * 10:(s + 1) * 10]
        first = block[0, 0]  # the position before the first fractional digit: the same in all ten rows
        p1 = torch.softmax(first[digits], dim=-1)
        mass = float(torch.exp(torch.logsumexp(first[digits], -1) - torch.logsumexp(first, -1)))
        second = torch.softmax(block[:, 1], dim=-1)[:, digits]  # [10 branches, 10 digits], unnormalised
        e2 = (second * values).sum(dim=-1)  # a non-digit (the number ended) counts as digit 0
        fraction = float((p1 * (values / 10.0 + e2 / 100.0)).sum())
        sign, integer, _ = fraction_digits(site.number)
        written = site.number.text.partition(".")[2]
        rest = float("0.00" + written[2:]) if len(written) > 2 else 0.0
        out.append(ExpectedNumber(value=sign * (int(integer or "0") + fraction + rest), digit_mass=mass))
    return out


__all__ = ["DigitScores", "ExpectedNumber", "NumberSite", "digit_by_digit", "digit_token_ids", "expected_numbers",
           "locate_site"]
