"""The ComfyUI generation backend: MODEL + CLIP + VAE → images, the way KSampler makes them.

The only engine that imports ComfyUI modules (``comfy.*``), and only inside functions, so the
package imports without ComfyUI. Each image is made like CLIPTextEncode → KSampler → VAEDecode with
that image's seed: an empty latent, ``comfy.sample.fix_empty_latent_channels``,
``comfy.sample.prepare_noise(latent, seed)``, ``comfy.sample.sample(...)`` and ``vae.decode`` — all
under ``torch.inference_mode()``. With no adapter (or strength 0) and text strength 0 an image is
therefore the very image stock nodes give for the same seed and settings.

:func:`apply_adapter_to_conditioning` (plain tensors, no ComfyUI import) is shared with the
EmotionConditioner nodes.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ..descriptors import emotional_prompt
from .emotion_adapter import EmotionAdapter
from ..emotion_space import VA
from .protocol import GenerationRequest
from ..progress import ProgressCallback

Conditioning = list  # ComfyUI CONDITIONING: [[cond [B,T,D], {"pooled_output": [B,P], ...}], ...]


def apply_adapter_to_conditioning(
    conditioning: Conditioning, adapter: Optional[EmotionAdapter], target: VA, strength: float = 1.0
) -> Conditioning:
    """A new CONDITIONING whose tensors the adapter moved toward ``target``.

    No adapter or ``strength == 0`` returns ``conditioning`` itself (bit-exact, nothing copied).
    Entries keep their other options (area, mask, hooks...); the input list and dicts are not mutated.
    """
    if adapter is None or float(strength) == 0.0:
        return conditioning
    out: Conditioning = []
    with torch.inference_mode():
        for entry in conditioning:
            cond, options = entry[0], entry[1]
            pooled = options.get("pooled_output")
            new_cond, new_pooled = adapter(cond, pooled, target, strength)  # SD1.5 adapters leave pooled alone
            new_options = dict(options)
            if pooled is not None:
                new_options["pooled_output"] = new_pooled
            out.append([new_cond, new_options, *entry[2:]])
    return out


def encode_text(clip: Any, text: str) -> Conditioning:
    """Exactly what CLIPTextEncode does: ``clip.encode_from_tokens_scheduled(clip.tokenize(text))``."""
    if clip is None:
        raise RuntimeError("the CLIP input is empty: connect the CLIP output of your checkpoint loader")
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


class ComfyGenerator:
    """Generator protocol over ComfyUI's MODEL / CLIP / VAE objects.

    ``max_batch_size > 1`` samples consecutive images that share prompt and target in one call, with
    the noise built per image from its own seed (faster; ancestral samplers' extra noise then follows
    the first image's seed, so images can differ slightly from one-by-one KSampler runs).
    """

    name = "comfyui"

    def __init__(
        self,
        model: Any,
        clip: Any,
        vae: Any,
        sampler_name: str = "euler",
        scheduler: str = "normal",
        adapter: Optional[EmotionAdapter] = None,
        text_strength: float = 0.0,
        denoise: float = 1.0,
        max_batch_size: int = 1,
    ):
        if model is None or clip is None or vae is None:
            missing = [n for n, v in (("MODEL", model), ("CLIP", clip), ("VAE", vae)) if v is None]
            raise ValueError(f"ComfyGenerator needs MODEL, CLIP and VAE; missing: {', '.join(missing)}")
        if not 0.0 <= text_strength <= 2.0:
            raise ValueError(f"text_strength must be in [0, 2], got {text_strength}")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model, self.clip, self.vae = model, clip, vae
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.adapter = adapter
        self.text_strength = float(text_strength)
        self.denoise = float(denoise)
        self.max_batch_size = int(max_batch_size)

    def prompts_for(self, request: GenerationRequest) -> list[str]:
        """The prompts actually encoded: the text route applied when targets are given."""
        if request.targets is None or self.text_strength == 0.0:
            return list(request.prompts)
        return [emotional_prompt(p, t, self.text_strength) for p, t in zip(request.prompts, request.targets)]

    def _groups(self, prompts: Sequence[str], targets: Optional[Sequence[VA]]) -> list[range]:
        """Consecutive runs sharing prompt and target, at most ``max_batch_size`` long."""
        groups: list[range] = []
        start = 0
        for i in range(1, len(prompts) + 1):
            same = (
                i < len(prompts)
                and prompts[i] == prompts[start]
                and (targets is None or targets[i] == targets[start])
                and i - start < self.max_batch_size
            )
            if not same:
                groups.append(range(start, i))
                start = i
        return groups

    def generate(self, request: GenerationRequest, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """Float32 ``[B, H, W, 3]`` images in 0..1 on CPU; image ``i`` from ``request.seeds[i]``.

        Progress goes to ``progress`` when given, else to a ComfyUI progress bar; ComfyUI's Cancel is
        honoured after every sampling step (``InterruptProcessingException`` propagates).
        """
        import comfy.model_management as mm
        import comfy.sample
        import comfy.utils

        prompts = self.prompts_for(request)
        targets = request.targets
        total = request.steps * len(prompts)
        if progress is None:
            bar = comfy.utils.ProgressBar(total)
            progress = lambda done, total_now: bar.update_absolute(done, total_now)  # noqa: E731
        disable_pbar = not getattr(comfy.utils, "PROGRESS_BAR_ENABLED", True)
        downscale = self._downscale()
        cache: dict[str, Conditioning] = {}
        images: list[torch.Tensor] = []
        with torch.inference_mode():
            negative = encode_text(self.clip, request.negative_prompt)
            for rows in self._groups(prompts, targets):
                mm.throw_exception_if_processing_interrupted()
                first = rows[0]
                if prompts[first] not in cache:
                    cache[prompts[first]] = encode_text(self.clip, prompts[first])
                positive = cache[prompts[first]]
                if targets is not None:
                    positive = apply_adapter_to_conditioning(positive, self.adapter, targets[first], request.adapter_strength)
                latent = torch.zeros(
                    [len(rows), 4, request.height // downscale, request.width // downscale],
                    device=mm.intermediate_device(),
                )
                latent = comfy.sample.fix_empty_latent_channels(self.model, latent)
                noise = torch.cat(
                    [comfy.sample.prepare_noise(latent[j : j + 1], int(request.seeds[i])) for j, i in enumerate(rows)]
                )
                done_before = first * request.steps
                n_rows = len(rows)

                def on_step(step, x0, x, total_steps, _done=done_before, _n=n_rows):
                    mm.throw_exception_if_processing_interrupted()
                    progress(_done + _n * min(step + 1, total_steps) * request.steps // total_steps, total)

                samples = comfy.sample.sample(
                    self.model, noise, request.steps, request.cfg, self.sampler_name, self.scheduler,
                    positive, negative, latent, denoise=self.denoise, callback=on_step,
                    disable_pbar=disable_pbar, seed=int(request.seeds[first]),
                )
                decoded = self.vae.decode(samples)
                if decoded.ndim == 5:  # video VAEs: fold frames into the batch, as VAEDecode does
                    decoded = decoded.reshape(-1, *decoded.shape[-3:])
                images.append(decoded[..., :3].float().clamp(0.0, 1.0).cpu())
        return torch.cat(images, dim=0).contiguous()

    def _downscale(self) -> int:
        ratio = getattr(self.vae, "spacial_compression_encode", None)
        try:
            return int(ratio()) if callable(ratio) else 8
        except Exception:  # some VAEs report tuples or nothing; stock EmptyLatentImage assumes 8
            return 8
