"""benchmarks/model_speed.py compares like with like: Diffusers' reference has our structure, and a run reports."""

from __future__ import annotations

import math

import pytest
import torch
from benchmark_helpers import benchmark_module


@pytest.fixture(scope="module")
def model_speed():
    with benchmark_module("model_speed") as module:
        yield module


def _trainable(model: torch.nn.Module) -> int:
    # Diffusers keeps the fixed Fourier frequencies as a frozen parameter, we keep them as a buffer
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "setting, ours",
    [
        ("cifar10-ncsnpp", "ours (google/ncsnpp structure)"),
        ("celebahq256-ncsnpp", "ours (ve/celebahq_256_ncsnpp_continuous)"),
    ],
)
def test_the_ncsnpp_reference_is_our_network_in_diffusers_blocks(model_speed, setting, ours):
    models = model_speed.build_models(0.0, setting)
    # Same blocks, channels, attention and skip pyramids: the trainable parameter counts agree exactly.
    assert _trainable(models[ours]) == _trainable(models[model_speed.REFERENCE])
    size = model_speed.SETTINGS[setting][0]
    assert models[model_speed.REFERENCE].config.sample_size == size == models[ours].config.sample_size


def test_a_round_reports_times_and_no_cuda_memory_on_the_cpu(model_speed):
    models = model_speed.build_models(0.0, "cifar10-ddpm")
    wall, cpu, peak = model_speed.time_models(models, torch.device("cpu"), 1, 1, 1, 32, "index")
    for name in models:
        for kind in ("forward", "forward_backward"):
            assert len(wall[name][kind]) == len(cpu[name][kind]) == 1 and wall[name][kind][0] > 0
            assert math.isnan(peak[name][kind])
