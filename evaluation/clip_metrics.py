"""CLIPScore (prompt fidelity) and CLIP-IQA (antonym-prompt quality) from a local CLIP folder.

Definitions (as torchmetrics states them; computed here with ``transformers.CLIPModel`` directly):

* ``CLIPScore(image, prompt) = 100 · max(cos(E_img, E_txt), 0)``, averaged over images;
* ``CLIP-IQA(image) = softmax(100 · [cos(E_img, E("Good photo.")), cos(E_img, E("Bad photo."))])[0]``,
  the probability of the positive antonym, averaged over images (Wang et al. 2023, "quality" pair).

Why not torchmetrics itself: torchmetrics 1.9 (the newest on the registry) refuses a local folder
for CLIP-IQA (it accepts only ``"clip_iqa"``, which downloads piq's weights, or ``openai/...`` hub
names) and treats ``CLIPModel.get_image_features`` as a tensor, which transformers 5 returns as a
``BaseModelOutputWithPooling``. Loading a folder with ``from_pretrained`` keeps it offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ..engines.errors import UserError

IQA_PROMPTS = ("Good photo.", "Bad photo.")
#: CLIP's trained logit scale; torchmetrics and CLIP-IQA use the fixed 100
LOGIT_SCALE = 100.0


class CLIPLoadError(UserError, RuntimeError):
    """The CLIP folder is missing or is not a CLIPModel + CLIPProcessor folder."""


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPMetrics:
    """A CLIP model + processor from a folder (or hub id), scoring images against texts."""

    def __init__(self, source: str, device: str | torch.device = "cpu", batch_size: int = 16):
        from transformers import CLIPModel, CLIPProcessor

        path = Path(source).expanduser()
        if (source.startswith((".", "/", "~")) or path.exists()) and not (path / "config.json").is_file():
            raise CLIPLoadError(f"--clip {source}: no config.json there; give a CLIP folder (CLIPModel + CLIPProcessor, "
                                "e.g. a copy of openai/clip-vit-large-patch14) or a hub id")
        try:
            self.model = CLIPModel.from_pretrained(str(path) if path.exists() else source).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(str(path) if path.exists() else source)
        except (OSError, ValueError) as exc:
            raise CLIPLoadError(f"could not load a CLIP model and processor from --clip {source}: {exc}") from exc
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.source = source
        self._max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-norm image embeddings ``[N, D]``."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.processor(images=list(images[start:start + self.batch_size]), return_tensors="pt")["pixel_values"]
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels.to(self.device))).float())
        features = torch.cat(chunks)
        return features / features.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``[N, D]`` (texts truncated to CLIP's window)."""
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, max_length=self._max_length,
                                          return_tensors="pt")
        features = _features(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                          attention_mask=tokens["attention_mask"].to(self.device))).float()
        return features / features.norm(dim=-1, keepdim=True)

    def clip_scores(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        """Per image ``100 · max(cos, 0)`` against its prompt."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        unique = sorted(set(prompts))
        text = self.text_embeddings(unique)
        rows = torch.tensor([unique.index(p) for p in prompts])
        cos = (self.image_embeddings(images) * text[rows]).sum(dim=-1)
        return (LOGIT_SCALE * cos.clamp(min=0.0)).tolist()

    def clip_iqa(self, images: Sequence[Image.Image], prompts: tuple[str, str] = IQA_PROMPTS) -> list[float]:
        """Per image probability of the positive antonym prompt (softmax over 100 · cos)."""
        anchors = self.text_embeddings(list(prompts))
        logits = LOGIT_SCALE * self.image_embeddings(images) @ anchors.T
        return logits.softmax(dim=-1)[:, 0].tolist()
