"""Fitted D-ODE parameters and the metadata that identifies them.

``Lambdas`` holds one row of parameters per network evaluation (book/method.md, D-ODE transform: a solver
with NFE n has n lambdas; for the multi-parameter variants of the method chapter's table of variants a row
has several). They are saved as NetCDF with everything needed to refuse reusing them on another solver,
NFE, grid, schedule or model (by name and, where the model's info records one, by the sha256 of its
weights: a retrained checkpoint keeps its name).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from dode.files import atomic_write
from dode.solvers import SOLVERS
from dode.version import __version__

__all__ = ["Lambdas", "VARIANTS", "TRANSFORM_SPACES", "STAGES", "check_transform"]

#: D-ODE formulations (the method chapter, variants): Eq. 10, Eq. 9 with two previous outputs, Sep, All
VARIANTS = ("d-ode", "d-ode-2", "sep", "all")
#: the prediction type the transform acts in; "native" = the model's own (the paper's D-ODE);
#: "x0" with a constant lambda is LA-DDIM's lookahead on data predictions (Zhang et al. 2023)
TRANSFORM_SPACES = ("native", "eps", "x0")
#: which evaluations carry a lambda: one per landing time, or one per stage (dode.sampling.lambda_evaluations)
STAGES = ("per_time", "per_stage")

_META_KEYS = (
    "solver",
    "nfe",
    "grid",
    "options",
    "variant",
    "space",
    "model",
    "checkpoint",
    "schedule",
    "K",
    "B",
    "seed",
    "teacher",
    "fit",
    "constant",
    "stages",
)
#: what older files lack: ``stages`` (files before it were fitted per stage), ``checkpoint`` (unrecorded)
_META_DEFAULTS = {"stages": "per_stage", "checkpoint": None}


def check_transform(variant: str, space: str, stages: str) -> None:
    """Refuse a D-ODE formulation that does not exist, naming the parameter and its allowed values."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if space not in TRANSFORM_SPACES:
        raise ValueError(f"space must be one of {TRANSFORM_SPACES}, got {space!r}")
    if stages not in STAGES:
        raise ValueError(f"stages must be one of {STAGES}, got {stages!r}")


class Lambdas:
    """Per-evaluation D-ODE parameters.

    ``values`` has shape ``(nfe, P)``; entries a variant does not use at an evaluation (the first
    evaluation of a data-prediction model has no previous output; with ``stages="per_time"``, Heun's
    corrector, see :func:`dode.sampling.lambda_evaluations`) are NaN. For the one-parameter D-ODE,
    ``lam[k]`` is the float lambda of evaluation ``k``.
    """

    def __init__(
        self,
        values,
        *,
        solver: str | None,
        nfe: int | None,
        grid: str | None,
        options: dict | None = None,
        variant: str = "d-ode",
        space: str = "native",
        model: str | None = None,
        checkpoint: str | None = None,
        schedule: dict | None = None,
        K: int | None = None,
        B: int | None = None,
        seed: int | None = None,
        teacher: str | None = None,
        fit: str | None = None,
        constant: bool = False,
        stages: str = "per_time",
        landing_times=None,
        info: dict | None = None,
    ):
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise ValueError(f"lambda values must be 1-D or 2-D, got shape {values.shape}")
        check_transform(variant, space, stages)
        self.stages = stages
        self.values = values
        self.solver, self.nfe, self.grid = solver, nfe, grid
        if options is None and solver in SOLVERS:
            # not given: the solver's defaults, as dode.distill records them. Stored lambdas always carry
            # the options they were fitted with, so a file fitted before a default changed stays refused.
            options = SOLVERS[solver].defaults
        self.options = dict(options or {})
        self.variant, self.space = variant, space
        # the sha256 of the weights they were fitted on (``denoiser.info["checkpoint_sha256"]``), None if unrecorded
        self.model, self.checkpoint, self.schedule = model, checkpoint, schedule
        self.K, self.B, self.seed, self.teacher, self.fit = K, B, seed, teacher, fit
        self.constant = bool(constant)
        self.landing_times = None if landing_times is None else np.asarray(landing_times, dtype=np.float64)
        self.info = dict(info or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def constant_value(cls, value: float, *, space: str = "native", stages: str = "per_time") -> Lambdas:
        """One lambda for every evaluation that carries one (Fixed-D-DDIM; with ``space="x0"``, LA-DDIM's
        lookahead)."""
        return cls(
            [[float(value)]], solver=None, nfe=None, grid=None, space=space, constant=True, stages=stages
        )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        if self.constant:
            raise TypeError("a constant Lambdas applies to any number of evaluations and has no length")
        return self.values.shape[0]

    def __getitem__(self, k):
        row = self.values[0 if self.constant else k]
        if self.values.shape[1] == 1 and np.ndim(k) == 0:
            return float(row[0])
        return row

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def params(self, k: int, n_columns: int) -> np.ndarray:
        """The parameters of evaluation ``k`` for a transform with ``n_columns`` free columns."""
        row = self.values[0] if self.constant else self.values[k]
        used, rest = row[:n_columns], row[n_columns:]
        if self.constant and n_columns > len(row):
            raise ValueError(
                f"a constant Lambdas has {len(row)} parameter(s), the {self.variant} transform needs {n_columns}"
            )
        if np.any(np.isnan(used)) or np.any(~np.isnan(rest)):
            raise ValueError(
                f"these lambdas hold {np.sum(~np.isnan(row))} parameter(s) for evaluation {k}, "
                f"but the {self.variant} transform has {n_columns} there"
            )
        return used

    # ------------------------------------------------------------------ compatibility
    def check_compatible(self, plan, denoiser, grid_key: str) -> None:
        """Refuse lambdas fitted for another solver, NFE, grid, solver options, schedule, model or checkpoint."""
        if self.constant:
            return
        problems = []
        if self.solver != plan.solver:
            problems.append(f"solver {self.solver!r} (asked: {plan.solver!r})")
        if self.nfe != plan.nfe:
            problems.append(f"nfe {self.nfe} (asked: {plan.nfe})")
        if self.grid != grid_key:
            problems.append(f"grid {self.grid!r} (asked: {grid_key!r})")
        if self.options != plan.options:
            problems.append(f"options {self.options} (asked: {plan.options})")
        if self.schedule is not None and self.schedule != denoiser.schedule.describe():
            problems.append(f"schedule {self.schedule} (asked: {denoiser.schedule.describe()})")
        if self.model is not None and denoiser.name is not None and self.model != denoiser.name:
            problems.append(f"model {self.model!r} (asked: {denoiser.name!r})")
        asked = denoiser.info.get("checkpoint_sha256")
        if None not in (self.checkpoint, asked) and self.checkpoint != asked:
            problems.append(f"checkpoint sha256 {self.checkpoint} (asked: {asked})")
        if problems:
            raise ValueError(
                "these lambdas were fitted for " + "; ".join(problems) + ", refit them with dode.distill"
            )
        if self.values.shape[0] != plan.nfe:
            raise ValueError(
                f"lambdas hold {self.values.shape[0]} rows, but the run has {plan.nfe} evaluations"
            )

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict:
        return {key: getattr(self, key) for key in _META_KEYS}

    def to_dataset(self):
        import xarray as xr

        n, p = self.values.shape
        coords = {"evaluation": np.arange(n), "param": np.arange(p)}
        if self.landing_times is not None:
            coords["landing_time"] = ("evaluation", self.landing_times)
        attrs = {}
        for key, value in self.metadata().items():
            if isinstance(value, bool):
                value = int(value)
            attrs[key] = json.dumps(value)
        attrs["info"] = json.dumps(self.info)
        attrs["dode_version"] = __version__
        attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return xr.Dataset({"lambda": (("evaluation", "param"), self.values)}, coords=coords, attrs=attrs)

    def save(self, path) -> Path:
        """Write NetCDF atomically (temp file in the same folder, then ``os.replace``)."""
        ds = self.to_dataset()
        return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))

    @classmethod
    def from_dataset(cls, ds) -> Lambdas:
        meta = {
            key: json.loads(ds.attrs[key]) if key in ds.attrs else _META_DEFAULTS[key] for key in _META_KEYS
        }
        landing = ds["landing_time"].values if "landing_time" in ds.coords else None
        return cls(
            ds["lambda"].values,
            landing_times=landing,
            info=json.loads(ds.attrs.get("info", "{}")),
            **meta,
        )

    @classmethod
    def load(cls, path) -> Lambdas:
        import xarray as xr

        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return cls.from_dataset(ds.load())

    def __repr__(self) -> str:
        if self.constant:
            return (
                f"Lambdas.constant_value({self.values[0, 0]!r}, space={self.space!r}, stages={self.stages!r})"
            )
        shown = np.array2string(
            self.values.squeeze(-1) if self.values.shape[1] == 1 else self.values, precision=3
        )
        return f"Lambdas({self.variant}, {self.stages}, solver={self.solver}, nfe={self.nfe}, grid={self.grid}, K={self.K}, B={self.B}: {shown})"
