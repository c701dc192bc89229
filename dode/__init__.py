"""dode: Distilled ODE solvers of diffusion models (D-ODE), the executable companion.

Schedules and grids, denoiser wrappers, the base ODE solvers in one sampling loop, the D-ODE transform and
its closed-form distillation, metrics and a model zoo.
"""

__version__ = "0.1.0"

from .denoiser import Denoiser
from .distill import distill
from .grids import GRIDS, make_grid
from .lambdas import VARIANTS, Lambdas
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
    "Trajectory",
    "sample",
    "EDMSchedule",
    "Schedule",
    "VPSchedule",
    "SOLVERS",
    "make_plan",
    "__version__",
]
