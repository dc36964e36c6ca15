"""Soft labels whose mean is the label, across the whole scale, for several sigmas; against DeQA-Score's method.

The targets of the soft-label objective are discretised Gaussians over the digits 1..9. Cut at the
scale's ends a Gaussian centred on the label has a mean pulled toward the centre; the old targets
(tails lumped into the end digits) read a label of ±3 as ±2.81 (sigma 0.7) and ±2.71 (sigma 1).
DeQA-Score (CVPR 2025, ``build_soft_labels/gen_soft_label.py``) rescales the distribution affinely so
its mean is the score; it is written out again below from its published formula, at its published
settings (cdf density, ``thre_std = 0.2``, ``thre_diff = 0.1``), generalised from its 5 levels to 9.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from emofeedback2.training.judge.soft_label_objective import soft_digit_targets, va_to_digit

pytestmark = pytest.mark.usefixtures("one_thread")  # many small float64 ops: threads only contend

DIGITS = torch.arange(1.0, 10.0, dtype=torch.float64)
SIGMAS = [0.3, 0.5, 0.7, 1.0, 1.5, 3.0]


def _mean_va(target: torch.Tensor) -> torch.Tensor:
    """The scorer's reading of a digit distribution: expected digit mapped to [-3, 3]."""
    return -3.0 + ((target.double() * DIGITS).sum(-1) - 1.0) * 6.0 / 8.0


def _entropy(target: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(target.double(), target.double()).sum(-1)


# --- DeQA-Score's method, written from its published script (independent of the code under test) ----------


def _bins(mu: float, sigma: float) -> list[float]:
    """DeQA-Score's "cdf" density: the Gaussian's mass on [k - 0.5, k + 0.5] per level, not normalised."""
    normal = NormalDist(mu, sigma)
    return [normal.cdf(k + 0.5) - normal.cdf(k - 0.5) for k in range(1, 10)]


def _deqa_two_levels(mu: float) -> list[float]:
    """DeQA-Score's ``get_binary_probs``: the score split linearly between its two neighbouring levels."""
    low = min(int(math.floor(mu)), 8)
    probs = [0.0] * 9
    probs[low - 1], probs[low] = low + 1 - mu, mu - low
    return probs


def _deqa_raw(mu: float, sigma: float) -> list[float]:
    """``adjust_gaussian_bar``: alpha·A + 9·beta = 1 and alpha·B + 45·beta = mu (levels 1..9, centre 5)."""
    probs = _bins(mu, sigma)
    a, b = sum(probs), sum(k * p for k, p in zip(range(1, 10), probs))
    alpha = (mu - 5.0) / (b - 5.0 * a + 1e-9)
    beta = (1.0 - alpha * a) / 9.0
    return [alpha * p + beta for p in probs]


def deqa_soft_label(mu: float, sigma: float, thre_std: float = 0.2, thre_diff: float = 0.1) -> list[float]:
    """DeQA-Score's label: the rescaled Gaussian clipped at 0, or two levels when sigma is small or the mean is off."""
    probs = [max(q, 0.0) for q in _deqa_raw(mu, sigma)]
    mean = sum(k * q for k, q in zip(range(1, 10), probs))
    if sigma < thre_std or abs(mean - mu) > thre_diff:
        probs = _deqa_two_levels(mu)
    return probs


def _lumped(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """The old targets: the tails below 1 and above 9 lumped into the end digits."""
    mu = va_to_digit(values.double())[..., None]
    upper = torch.special.ndtr((DIGITS + 0.5 - mu) / sigma)
    lower = torch.special.ndtr((DIGITS - 0.5 - mu) / sigma)
    upper[..., -1], lower[..., 0] = 1.0, 0.0
    return upper - lower


# --- the mean ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
def test_the_mean_of_the_soft_label_is_the_label_across_the_whole_scale(sigma):
    labels = torch.linspace(-3.0, 3.0, 1201, dtype=torch.float64)
    target = soft_digit_targets(labels, sigma)
    assert target.dtype == torch.float64 and target.shape == (1201, 9)
    assert (target >= 0).all() and torch.allclose(target.sum(-1), torch.ones(1201, dtype=torch.float64), atol=1e-12)
    assert (_mean_va(target) - labels).abs().max() < 1e-6
    single = soft_digit_targets(labels.float(), sigma)  # what training passes: float32 labels and targets
    assert single.dtype == torch.float32 and (_mean_va(single) - labels.float().double()).abs().max() < 1e-5


@pytest.mark.parametrize("sigma, bias", [(0.7, 0.19), (1.0, 0.29)])
def test_the_ends_are_no_longer_pulled_toward_the_centre(sigma, bias):
    """The bias the issue reports for the old, lumped targets, and its absence now."""
    ends = torch.tensor([-3.0, 3.0], dtype=torch.float64)
    before = _mean_va(_lumped(ends, sigma)) - ends
    assert before.tolist() == pytest.approx([bias, -bias], abs=0.006)
    after = soft_digit_targets(ends, sigma)
    assert (_mean_va(after) - ends).abs().max() < 1e-9
    assert after[0, 0] == pytest.approx(1.0) and after[1, -1] == pytest.approx(1.0)  # only a one-hot has mean 1 or 9


# --- the entropy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
def test_entropy_is_symmetric_continuous_and_vanishes_only_at_the_ends(sigma):
    labels = torch.linspace(-3.0, 3.0, 1201, dtype=torch.float64)  # steps of 0.005
    target = soft_digit_targets(labels, sigma)
    entropy = _entropy(target)
    assert torch.allclose(target, target.flip(0).flip(-1), atol=1e-9)  # label -v is label v mirrored
    assert (entropy - entropy.flip(0)).abs().max() < 1e-9
    assert entropy[0] < 1e-9 and entropy[-1] < 1e-9  # one-hot at +-3
    inside = entropy[2:-2]
    assert (inside > 1e-3).all()
    inner = labels.abs() <= 2.9
    assert entropy[inner].diff().abs().max() < 0.02  # no jump between neighbouring labels (a fallback switch would)


@pytest.mark.parametrize("sigma", [1.0, 1.5, 3.0])
def test_entropy_falls_from_the_centre_to_the_ends_when_sigma_spans_digits(sigma):
    labels = torch.linspace(0.0, 3.0, 601, dtype=torch.float64)
    entropy = _entropy(soft_digit_targets(labels, sigma))
    assert (entropy.diff() <= 1e-12).all()


def test_a_smaller_sigma_is_sharper_everywhere_inside_the_scale():
    labels = torch.linspace(-2.995, 2.995, 1199, dtype=torch.float64)
    entropies = [_entropy(soft_digit_targets(labels, s)) for s in SIGMAS]
    assert all((a < b).all() for a, b in zip(entropies, entropies[1:]))


@pytest.mark.parametrize("sigma", [0.5, 0.7, 1.0])
def test_in_the_middle_the_target_is_the_plain_gaussian(sigma):
    """Where the cut tails are negligible the correction is tiny: the target keeps the Gaussian's shape."""
    labels = torch.linspace(-1.0, 1.0, 201, dtype=torch.float64)
    plain = torch.tensor([_bins(float(m), sigma) for m in va_to_digit(labels)], dtype=torch.float64)
    plain = plain / plain.sum(-1, keepdim=True)
    assert (soft_digit_targets(labels, sigma) - plain).abs().max() < 2e-3


# --- against DeQA-Score --------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma, tolerance", [(0.5, 3e-3), (0.7, 1e-4), (1.0, 2e-4)])
def test_agrees_with_deqa_score_where_its_rescale_is_exact(sigma, tolerance):
    """Where DeQA-Score's rescaled Gaussian needs no clipping, it has the label as its mean too and both
    methods give the same distribution; away from those points its clipping misses the label."""
    compared, off = 0, []
    values = torch.linspace(-2.99, 2.99, 599, dtype=torch.float64)
    for value, ours in zip(values, soft_digit_targets(values, sigma)):
        mu = float(va_to_digit(value))
        raw = _deqa_raw(mu, sigma)
        if abs(mu - 5.0) < 0.05:
            continue  # DeQA-Score's formula is 0/0 at the centre (next test)
        if min(raw) >= -1e-12:
            compared += 1
            deqa = torch.tensor(deqa_soft_label(mu, sigma), dtype=torch.float64)
            assert abs(float((deqa * DIGITS).sum()) - mu) < 1e-6
            assert (ours - deqa).abs().max() < tolerance, (float(value), ours, deqa)
        else:
            deqa = torch.tensor(deqa_soft_label(mu, sigma), dtype=torch.float64)
            off.append(abs(float((deqa * DIGITS).sum()) - mu))
        assert abs(float((ours * DIGITS).sum()) - mu) < 1e-9
    assert compared >= 40, compared  # the comparison ran on enough labels to fail
    assert max(off) > 1e-3  # where DeQA-Score clips, its mean misses the label; ours never does


def test_at_the_centre_deqa_score_returns_a_uniform_label_and_ours_the_gaussian():
    deqa = deqa_soft_label(5.0, 0.7)
    assert deqa == pytest.approx([1.0 / 9.0] * 9)  # alpha = 0 / (0 + 1e-9)
    ours = soft_digit_targets(torch.zeros(1, dtype=torch.float64), 0.7)[0]
    plain = torch.tensor(_bins(5.0, 0.7), dtype=torch.float64)
    assert torch.allclose(ours, plain / plain.sum(), atol=1e-9)
