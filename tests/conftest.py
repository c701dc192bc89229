"""Shared fixtures: the exact Gaussian-mixture test bed on both schedules."""

from __future__ import annotations

import os

import pytest
import torch

import dode
from dode.gmm import GaussianMixture

# The tests push tiny tensors through many small ops: one thread avoids thread-pool overhead that dominates
# them on a shared 2-core machine (measured 0.8 ms vs 0.002 ms per softmax of an 8x4 tensor).
torch.set_num_threads(1)
# The same for the notebook kernels that papermill starts (they inherit the environment): with two OpenMP
# threads on a loaded machine every small convolution waits for a descheduled thread (measured 2 s instead
# of 30 ms per call of a miniature net at batch 48).
os.environ["OMP_NUM_THREADS"] = "1"

SCHEDULES = {"vp": dode.VPSchedule.linear(), "edm": dode.EDMSchedule()}


@pytest.fixture(scope="session")
def gmm() -> GaussianMixture:
    return GaussianMixture.random(n_components=4, dim=8, seed=0)


@pytest.fixture(params=["vp", "edm"])
def schedule_name(request) -> str:
    return request.param


@pytest.fixture(params=["eps", "x0"])
def prediction(request) -> str:
    return request.param


def make_noise(n: int, dim: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class CountingNet:
    """A network wrapper that counts its calls (network evaluations)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def tiny_unet(sample_size: int = 32, num_class_embeds=None):
    """A seeded random-weight diffusers ``UNet2DModel`` of a few thousand parameters (3 channels)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    ).eval()
