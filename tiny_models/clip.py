"""A tiny random CLIP (text + vision towers) and tiny LPIPS weights, built offline for the evaluation tests.

The CLIP folder has the real layout (``config.json`` + ``model.safetensors`` of a
:class:`transformers.CLIPModel`, a ``CLIPProcessor`` with its tokenizer and image processor), so
the evaluation loads it with the same ``from_pretrained`` call users run on
``openai/clip-vit-large-patch14``. Its numbers mean nothing (random weights); what the tests pin
down is that the metric code computes its formula on whatever CLIP it is given.

The LPIPS folder holds the files :mod:`emofeedback2.evaluation.lpips_metric` documents: a
torchvision backbone state dict (random here, ImageNet-trained for real use) and the LPIPS linear
heads in the ``lpips`` package's own layout (``weights/v0.1/<net>.pth``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .diffusion import TOKENIZER_MAX_LENGTH, _tokenizer, _vocab

CLIP_HIDDEN = 32
CLIP_PROJECTION = 16
CLIP_IMAGE_SIZE = 32


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a random tiny ``CLIPModel`` + ``CLIPProcessor`` into ``out_dir`` (deterministic given ``seed``)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    text = dict(
        vocab_size=len(vocab), hidden_size=CLIP_HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=TOKENIZER_MAX_LENGTH, projection_dim=CLIP_PROJECTION,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )
    vision = dict(
        hidden_size=CLIP_HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE, patch_size=8, projection_dim=CLIP_PROJECTION,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_PROJECTION)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer = _tokenizer()
    images = CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE_SIZE},
                                crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(out))
    return out


def build_tiny_lpips(out_dir: str | Path, net: str = "alex", seed: int = 0) -> Path:
    """Random LPIPS weights in the documented folder layout: ``<torchvision name>.safetensors`` for the
    backbone and ``weights/v0.1/<net>.pth`` (the ``lpips`` package's layout) for the linear heads."""
    import lpips
    from safetensors.torch import save_file

    from ..evaluation.lpips_metric import BACKBONE_FILES, lpips_head_keys

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated `pretrained=False`
        torch.manual_seed(seed)
        model = lpips.LPIPS(net=net, pnet_rand=True, pretrained=False, verbose=False)
        state = model.state_dict()
        backbone = {f"features.{key.split('.', 2)[2]}": value.clone() for key, value in state.items()
                    if key.startswith("net.slice")}
        heads = {key: torch.rand_like(state[key]) * 0.1 for key in lpips_head_keys(state)}
    save_file(backbone, str(out / f"{BACKBONE_FILES[net]}.safetensors"))
    (out / "weights" / "v0.1").mkdir(parents=True, exist_ok=True)
    torch.save(heads, out / "weights" / "v0.1" / f"{net}.pth")
    return out


def main() -> None:  # pragma: no cover - for humans: python -m emofeedback2.tiny_models.clip CLIP_DIR [--lpips DIR]
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip_dir")
    parser.add_argument("--lpips", default=None, help="also write tiny random LPIPS weights into this folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_clip(args.clip_dir, args.seed))
    if args.lpips:
        print(build_tiny_lpips(args.lpips, seed=args.seed))


if __name__ == "__main__":  # pragma: no cover
    main()
