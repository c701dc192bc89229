"""A stand-in for pytorch-fid's Inception in the notebook kernels of tests/test_dry_run.py.

Python imports ``sitecustomize`` at start-up from the first folder of ``PYTHONPATH`` that has one; the test
puts this folder there, so every kernel that papermill starts gets it. When ``dode.metrics`` is imported,
pytorch-fid's ``InceptionV3`` is replaced by a seeded random projection of 4x4-pooled images, and FID's
feature dimension by :data:`DIM`: the real network would cost seconds per image batch on the test machine's
CPU, and a 2048-d Frechet distance seconds per cell, of which a dry run has about a hundred. Everything else
of the FID route (weights file in the torch hub cache, statistics files, their hashes) stays the real one.
"""

import importlib.abc
import importlib.util
import sys

DIM = 64


def _stand_in(metrics) -> None:
    import pytorch_fid.inception
    import torch

    class StandinInception(torch.nn.Module):
        BLOCK_INDEX_BY_DIM = {DIM: 3}

        def __init__(self, blocks):
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.register_buffer("projection", torch.randn(3 * 4 * 4, DIM, generator=generator))

        def forward(self, x):
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
            return [(pooled @ self.projection)[:, :, None, None]]

    pytorch_fid.inception.InceptionV3 = StandinInception
    metrics.FID.DIM = DIM


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs :func:`_stand_in` on ``dode.metrics`` right after the module itself has run."""

    def find_spec(self, name, path, target=None):
        if name != "dode.metrics":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _stand_in(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AfterImport())
