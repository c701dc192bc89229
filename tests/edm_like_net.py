"""A miniature network with EDM's interface, ``net(x, sigma, class_labels)``, for the zoo's pickle tests.

It lives in its own module (not in a test file) so that a pickle of it can be loaded again by importing
``edm_like_net``, as EDM's pickles are loaded by importing EDM's ``torch_utils``.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyEDMNet(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1) around one convolution, with EDM's attributes."""

    def __init__(self, img_resolution: int = 32, img_channels: int = 3, label_dim: int = 0, sigma_data=0.5):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_data = sigma_data
        self.sigma_min = 0.0
        self.sigma_max = float("inf")
        self.conv = nn.Conv2d(img_channels, img_channels, 3, padding=1)
        self.noise_scale = nn.Parameter(torch.tensor(0.3))
        self.label_map = nn.Linear(label_dim, img_channels) if label_dim else None

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()
        c_in = 1 / (self.sigma_data**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        f = self.conv(c_in * x) + self.noise_scale * c_noise
        if self.label_map is not None:
            labels = torch.zeros(1, self.label_dim) if class_labels is None else class_labels
            f = f + self.label_map(labels.to(torch.float32))[:, :, None, None]
        return c_skip * x + c_out * f
