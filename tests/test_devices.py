"""Device/dtype names shared by the engines: clear errors in each engine's own exception type."""

import pytest
import torch

from emofeedback2.engines import devices
from emofeedback2.engines.generation.diffusers_backend import ModelLoadError, resolve_device as generator_device
from emofeedback2.engines.judge.lvlm_scorer import LVLMLoadError, resolve_dtype as lvlm_dtype


def test_auto_is_float32_on_cpu_and_names_map_to_torch_dtypes():
    cpu = torch.device("cpu")
    assert devices.resolve_dtype("auto", cpu) == torch.float32
    assert devices.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert devices.resolve_device("cpu") == cpu


def test_bad_names_raise_the_callers_error_with_the_choices():
    with pytest.raises(LVLMLoadError, match="bfloat16"):
        lvlm_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="not a torch device"):
        devices.resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_says_what_to_use_instead():
    with pytest.raises(ModelLoadError, match="device='cpu'"):
        generator_device("cuda")
