"""dode: Distilled ODE solvers of diffusion models (D-ODE), the executable companion.

Schedules and grids, denoiser wrappers, the base ODE solvers in one sampling loop, the D-ODE transform and
its closed-form distillation, metrics and a model zoo; progressive distillation (Salimans & Ho 2022) as the
network-training baseline of the cost comparison.
"""

__version__ = "0.1.0"

from .denoiser import Denoiser
from .distill import distill
from .grids import GRIDS, make_grid
from .lambdas import VARIANTS, Lambdas
from .progressive import progressive_distillation
from .sampling import Trajectory, sample
from .schedules import EDMSchedule, Schedule, VPSchedule
from .solvers import SOLVERS, make_plan

__all__ = [
    "Denoiser",
    "distill",
    "GRIDS",
    "make_grid",
    "VARIANTS",
    "Lambdas",
    "progressive_distillation",
    "Trajectory",
    "sample",
    "EDMSchedule",
    "Schedule",
    "VPSchedule",
    "SOLVERS",
    "make_plan",
    "__version__",
]

# Submodules reachable as attributes of ``dode`` (``dode.zoo.load(...)``, ``dode.metrics.FD()``) without
# importing their heavier dependencies (diffusers, pytorch-fid, xarray) until first use.
_SUBMODULES = {
    "analysis",
    "claims",
    "classifier",
    "data",
    "embedded",
    "experiments",
    "gmm",
    "metrics",
    "nets",
    "paper",
    "plots",
    "progressive",
    "protocols",
    "results",
    "timing",
    "train",
    "zoo",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dode' has no attribute {name!r}")
