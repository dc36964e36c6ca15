"""Shared test set-up: offline hub, deterministic torch, and the tiny-model fixtures.

Fixtures live in ``fixtures_*.py`` plugin modules (one per model family) so each stays small.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

pytest_plugins = [
    "fixtures_lvlm",  # tiny Qwen2/2.5/3-VL models (scorer issue)
    "fixtures_diffusion",  # tiny SD1.5/SDXL/SD3 pipelines (generation issue)
    "fixtures_comfy_fakes",  # fake comfy.utils / model_management / folder_paths (scorer issue)
    "fixtures_comfy_sampling",  # fake MODEL/CLIP/VAE and comfy.sample (generation issue)
    "fixtures_comfy_server",  # real ComfyUI server when COMFYUI_DIR is set (workflows issue)
]


@pytest.fixture
def one_thread():
    """Run a test single-threaded: tiny models are fastest so, with no oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
