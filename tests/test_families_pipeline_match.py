"""Each family's pieces, put together by the training policy, sample what that family's diffusers pipeline samples.

The policy's deterministic sampler (Euler on the family's velocity, the family's packing, ids,
timestep scale, shift, guidance and decoding) must reproduce the pipeline's own ``__call__`` from the
same seeds: the same final latents and the same images. A wrong piece (unpacked ids, σ instead of
1 − σ for Z-Image, a missing velocity sign, guidance in the wrong place, an unshifted schedule)
moves the output far beyond rounding. One encoder call per prompt on both sides.
"""

from __future__ import annotations

import pytest
import torch

from emofeedback2.training.generator.families import family_for
from emofeedback2.training.generator.policies import DiffusionPolicy, rollout
from emofeedback2.training.generator.policy_net import PolicyNet

pytestmark = pytest.mark.usefixtures("one_thread")

RESOLUTION = 32
STEPS = 3
SEEDS = [11, 12]


def _load(tiny_pipeline_dirs, arch):
    from emofeedback2.engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_pipeline

    config = DiffusersGeneratorConfig(model=str(tiny_pipeline_dirs[arch]), device="cpu", dtype="float32")
    return load_pipeline(config, torch.device("cpu"), torch.float32)


def _ours(pipe, arch, prompt, negative, cfg):
    family = family_for(arch)
    net = PolicyNet(arch, family.denoiser(pipe), None, torch.float32, guidance_mode=family.guidance_mode(pipe))
    policy = DiffusionPolicy(pipe, arch, net, resolution=RESOLUTION, device=torch.device("cpu"))
    cond = policy.encode([prompt] * len(SEEDS), negative, cfg != 1.0)
    va = torch.zeros(len(SEEDS), 2)
    traj = rollout(policy, net, cond, va, SEEDS, STEPS, cfg, 0.0, stochastic=False)
    return traj.latents[:, -1], traj.images


# (arch, pipeline keywords, our guidance): each family at the guidance its users run it with, and at true CFG
CASES = [
    ("flux", dict(guidance_scale=3.5), 3.5),  # guidance-distilled: the value goes into the embedding
    ("flux2_klein", dict(guidance_scale=1.0), 1.0),  # step-distilled: no guidance
    ("qwen_image", dict(true_cfg_scale=1.0), 1.0),
    ("qwen_image", dict(true_cfg_scale=2.5, negative_prompt="blurry"), 2.5),  # true CFG + norm rescale
    ("z_image", dict(guidance_scale=0.0), 1.0),  # Turbo: no CFG
    ("z_image", dict(guidance_scale=1.5, negative_prompt="blurry"), 2.5),  # Z-Image's g = our cfg - 1
    ("sd3", dict(guidance_scale=1.0), 1.0),
]


@pytest.mark.parametrize("arch,kwargs,cfg", CASES, ids=[f"{c[0]}-cfg{c[2]}" for c in CASES])
def test_policy_sampler_reproduces_the_pipeline(tiny_pipeline_dirs, arch, kwargs, cfg):
    pipe = _load(tiny_pipeline_dirs, arch)
    prompt = "a quiet harbour at dawn"
    negative = kwargs.get("negative_prompt", "")
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    with torch.no_grad():
        theirs_images = pipe(prompt=[prompt] * len(SEEDS), height=RESOLUTION, width=RESOLUTION, num_inference_steps=STEPS,
                             generator=generators, output_type="pt",
                             **{k: ([v] * len(SEEDS) if k == "negative_prompt" else v) for k, v in kwargs.items()}).images
    latents, images = _ours(pipe, arch, prompt, negative, cfg)
    assert images.shape == (len(SEEDS), RESOLUTION, RESOLUTION, 3)
    theirs = theirs_images.float().permute(0, 2, 3, 1)
    # a wrong piece moves the images by ~0.1-1; batch-size-dependent rounding by ≤ 2e-6
    assert float((theirs - images).abs().max()) < 2e-5, float((theirs - images).abs().max())
    assert float(images.std()) > 1e-3  # not a constant image that would match anything


@pytest.mark.parametrize("arch", ["flux", "qwen_image", "z_image"])
def test_a_wrong_piece_is_caught(tiny_pipeline_dirs, arch, monkeypatch):
    """Control: with the velocity's sign flipped the same comparison fails (the test can fail)."""
    pipe = _load(tiny_pipeline_dirs, arch)
    family = family_for(arch)
    original = type(family).forward
    monkeypatch.setattr(type(family), "forward", lambda self, *a, **k: -original(self, *a, **k))
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    kwargs = {"flux": dict(guidance_scale=3.5), "qwen_image": dict(true_cfg_scale=1.0),
              "z_image": dict(guidance_scale=0.0)}[arch]
    with torch.no_grad():
        theirs = pipe(prompt=["a quiet harbour at dawn"] * len(SEEDS), height=RESOLUTION, width=RESOLUTION,
                      num_inference_steps=STEPS, generator=generators, output_type="pt", **kwargs).images
    _, images = _ours(pipe, arch, "a quiet harbour at dawn", "", 3.5 if arch == "flux" else 1.0)
    assert float((theirs.float().permute(0, 2, 3, 1) - images).abs().max()) > 1e-2
