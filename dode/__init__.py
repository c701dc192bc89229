"""dode: distilled ODE solvers of diffusion models (D-ODE solvers).

The core, importable with only torch and numpy: noise schedules and time grids, the denoiser wrapper, the
base ODE solvers in one sampling loop, the D-ODE transform and its closed-form distillation, and time grids
fitted to the model (GITS's, :func:`dode.gits.fit_grid`)::

    import dode
    den = dode.Denoiser(my_eps_net, dode.VPSchedule.linear(), prediction="eps")
    lambdas = dode.distill(den, noise, solver="dpm_solver++", nfe=10)
    x = dode.sample(den, fresh_noise, solver="dpm_solver++", nfe=10, lambdas=lambdas)

Beside the core, imported on first use only:

- :mod:`dode.gmm`: an exact test bed (a Gaussian mixture whose denoiser is known in closed form);
- :mod:`dode.reference`: plain-loop D-DDIM and D-Heun from the method chapter, to check the machinery by;
- :mod:`dode.zoo`: every model (the paper's checkpoints, the embedded digit models, their training,
  progressive distillation);
- :mod:`dode.metrics`: FD, FID and L2 to a reference;
- :mod:`dode.integrations.diffusers`: a D-solver as a diffusers scheduler (``DODEScheduler``, ``fit_lambdas``);
- :mod:`dode.companion`: the notebooks' harness (protocols, sweeps, results files, claims, plots, book).
"""

from dode.denoiser import Denoiser
from dode.distill import distill
from dode.gits import fit_grid
from dode.grids import FITTED_GRIDS, GRIDS, FittedGrid, make_grid
from dode.lambdas import VARIANTS, Lambdas
from dode.sampling import Trajectory, sample
from dode.schedules import EDMSchedule, Schedule, VPSchedule
from dode.solvers import SOLVERS, make_plan
from dode.version import __version__

__all__ = [
    "Denoiser",
    "distill",
    "GRIDS",
    "FITTED_GRIDS",
    "FittedGrid",
    "fit_grid",
    "make_grid",
    "VARIANTS",
    "Lambdas",
    "Trajectory",
    "sample",
    "EDMSchedule",
    "Schedule",
    "VPSchedule",
    "SOLVERS",
    "make_plan",
    "__version__",
]

# Reachable as attributes (``dode.zoo.load(...)``) without importing their dependencies until first use.
_SUBMODULES = {"companion", "gmm", "integrations", "metrics", "reference", "zoo"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"dode.{name}")
    raise AttributeError(f"module 'dode' has no attribute {name!r}")
