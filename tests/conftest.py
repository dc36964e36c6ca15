"""Shared test set-up: offline hub, deterministic torch, and the tiny-model fixtures.

Fixtures live in ``fixtures_*.py`` plugin modules (one per model family) so each stays small.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

pytest_plugins = ["fixtures_lvlm", "fixtures_diffusion", "fixtures_comfy"]
