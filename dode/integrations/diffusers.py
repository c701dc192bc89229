"""D-ODE solvers inside a diffusers pipeline: a scheduler that runs dode's own sampling loop.

:class:`DODEScheduler` can be assigned to ``pipe.scheduler`` of any diffusers pipeline of a discrete VP
model that calls ``scheduler.step`` once per network evaluation (``DDPMPipeline``, ``DDIMPipeline``,
classifier-free guided pipelines, which combine their outputs before ``step``)::

    lambdas = fit_lambdas(pipe, solver="dpm_solver++", nfe=10)
    pipe.scheduler = DODEScheduler.from_config(pipe.scheduler.config, lambdas=lambdas)
    images = pipe(num_inference_steps=10).images

Why it reproduces :func:`dode.sample` exactly: the scheduler re-implements no solver. ``set_timesteps``
makes dode's plan; the first ``step`` starts :func:`dode.sample` in a worker thread on the pipeline's
initial noise, with a network that hands each of its inputs to the pipeline and waits for the pipeline's
model output. Every ``step`` thus lets dode's one sampling loop (D-ODE transform included, Eq. 10 of the
paper; book/method.md) run up to its next network evaluation and returns the state there. The pipeline
calls its UNet on that state cast to the UNet's dtype, at the float32 timestep dode's own wrapper of a
diffusers UNet gives it (:func:`dode.zoo.diffusers_denoiser`), so the network sees the very inputs it would
see inside :func:`dode.sample`, while the solver keeps its float64 state.

What diffusers' own schedulers do beyond the probability-flow ODE is not done here: no ``clip_sample`` or
thresholding, no stochastic ``eta``, and the time grid is dode's (``grid``), not ``timestep_spacing``.
"""

from __future__ import annotations

import json
import queue
import threading
import weakref

import numpy as np
import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

import dode
from dode.grids import grid_key
from dode.zoo import diffusers_denoiser, prediction_from_scheduler_config, vp_schedule_from_scheduler_config

__all__ = ["DODEScheduler", "fit_lambdas"]


class DODEScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler whose steps are the network evaluations of a dode (D-)solver.

    Parameters
    ----------
    num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
    rescale_betas_zero_snr:
        the model's noise schedule and prediction type, as in diffusers' schedulers (pass
        ``pipe.scheduler.config`` to :meth:`from_config`); ``prediction_type`` must be ``epsilon`` or
        ``sample``.
    solver:
        a dode solver (``ddim``, ``ipndm``, ``deis``, ``dpm_solver``, ``dpm_solver++``, ``edm``); default: the
        solver the lambdas were fitted for, else ``ddim``.
    grid:
        dode's time grid: a name (``time_uniform``, ``logsnr_uniform``, ``quadratic``, ``edm``) or a list of
        model times; default: the lambdas' grid, else dode's default (``time_uniform``).
    solver_options:
        solver options, e.g. ``{"order": 2}`` for ``deis``/``dpm_solver``; default: the lambdas' options.
    lambdas:
        a :class:`dode.Lambdas` (fitted with :func:`fit_lambdas` or :func:`dode.distill`, or
        ``Lambdas.constant_value(c)``) or its JSON form as stored in a saved scheduler config; ``None`` runs
        the base solver.

    ``set_timesteps(n)`` plans ``n`` network evaluations (the NFE; fitted lambdas must have been fitted for
    that NFE). ``timesteps`` holds the model time of each evaluation as float32 (fractional training
    indices for most grids).
    """

    order = 1  # one step call per network evaluation, also for dode's multistage solvers
    # their configs are read for the schedule alone; their other keys (clip_sample, ...) are dropped quietly
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | np.ndarray | None = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        solver: str | None = None,
        grid: str | list[float] | None = None,
        solver_options: dict | None = None,
        lambdas: dode.Lambdas | dict | None = None,
    ):
        self.lambdas = _as_lambdas(lambdas)
        # the config keeps the lambdas' JSON form, so save_config / from_pretrained round-trip them
        self.register_to_config(lambdas=None if self.lambdas is None else _lambdas_to_json(self.lambdas))
        fitted = self.lambdas is not None and not self.lambdas.constant
        self.solver = solver if solver is not None else (self.lambdas.solver if fitted else "ddim")
        if self.solver not in dode.SOLVERS:
            raise ValueError(f"solver must be one of {sorted(dode.SOLVERS)}, got {self.solver!r}")
        self.grid = grid if grid is not None else (_grid_from_key(self.lambdas.grid) if fitted else None)
        if solver_options is not None:
            self.solver_options = dict(solver_options)
        else:
            self.solver_options = dict(self.lambdas.options) if fitted else {}
        config = dict(self.config)
        self.schedule = vp_schedule_from_scheduler_config(config)
        self.prediction = prediction_from_scheduler_config(config)
        # VP models start from the noise itself (dode.VPSchedule.initial_state) and take the state unscaled
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self._eval_times: list[float] = []
        self._k = 0
        self._run: _Run | None = None
        self._state: torch.Tensor | None = None  # dode's float64 state at its next evaluation

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Plan ``num_inference_steps`` network evaluations; ``timesteps`` are their model times."""
        plan = dode.make_plan(self.schedule, self.solver, num_inference_steps, self.grid, self.solver_options)
        run = _Run(self.schedule, self.prediction)
        if self.lambdas is not None:
            self.lambdas.check_compatible(plan, run.denoiser, grid_key(self.grid))
        if self._run is not None:  # an earlier run the pipeline left unfinished
            self._finalizer()
        self._run = run
        # dropping the scheduler mid-run ends its worker (the thread holds no reference to the scheduler)
        self._finalizer = weakref.finalize(self, run.cancel)
        # evaluation k is taken at the state evaluation k - 1 landed on (every dode solver chains its stages)
        self._eval_times = [plan.start.t, *plan.landing_times[:-1]]
        self.timesteps = torch.tensor(self._eval_times, dtype=torch.float32, device=device)
        self.num_inference_steps = plan.nfe
        self._k = 0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network takes the state unscaled (VP)."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool | None = None,
        generator=None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Hand dode's loop the model output at ``sample`` and return the state of its next evaluation.

        ``model_output`` is the network's output (after guidance) in the config's prediction type;
        ``timestep`` must be ``timesteps[k]`` at the k-th call and ``sample`` the initial noise at the first
        call, the previous ``prev_sample`` afterwards. ``eta`` must be 0 (the solvers are deterministic ODE
        solvers). ``use_clipped_model_output`` and ``generator`` are accepted for DDIMPipeline/DDPMPipeline and
        have no effect: nothing is clipped and nothing is drawn.
        """
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step")
        k = self._k
        if k >= self.num_inference_steps:
            raise RuntimeError(
                f"step was called more than the {self.num_inference_steps} planned evaluations; "
                "call set_timesteps again for a new run"
            )
        if eta != 0:
            raise ValueError(f"eta must be 0 (dode's solvers are deterministic), got {eta!r}")
        expected = self.timesteps[k].cpu()
        given = torch.as_tensor(timestep).detach().reshape(-1).cpu().to(torch.float32)
        if given.numel() == 0 or not torch.all(given == expected):
            raise ValueError(
                f"timestep must be scheduler.timesteps[{k}] = {float(expected)!r} at step call {k}, got {timestep!r}: "
                "the D-scheduler expects one step call per network evaluation, in order"
            )
        if k == 0:
            self._run.start(
                sample,
                solver=self.solver,
                nfe=self.num_inference_steps,
                grid=self.grid,
                lambdas=self.lambdas,
                **self.solver_options,
            )
        elif not torch.equal(sample, self._state.to(sample.device, sample.dtype)):
            raise ValueError(
                "sample must be the prev_sample the previous step returned: the D-scheduler integrates dode's "
                "own float64 state, so a pipeline that changes the sample between steps is not supported"
            )
        kind, state, t = self._run.advance(model_output)
        self._k += 1
        if kind == "evaluate" and t != self._eval_times[self._k]:
            raise AssertionError(
                f"internal error: dode evaluates at t={t}, planned {self._eval_times[self._k]}"
            )
        if (kind == "done") != (self._k == self.num_inference_steps):
            raise AssertionError(
                f"internal error: dode's run ended after {self._k} of {self.num_inference_steps}"
            )
        self._state = state if kind == "evaluate" else None  # the final state is the pipeline's alone
        # a copy: the pipeline may modify it in place, the state stays dode's
        prev_sample = state.to(sample.dtype, copy=True)
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)


class _Cancelled(BaseException):
    """Ends an abandoned run's worker (a BaseException, so no ``except Exception`` in the loop stops it)."""


_CANCEL = object()


class _Run:
    """One :func:`dode.sample` call in a worker thread, paused at each network evaluation.

    The worker's network posts ``("evaluate", x, t)`` and blocks until :meth:`advance` supplies the output;
    the run ends with ``("done", x, None)``, or ``("error", exception, None)`` which :meth:`advance` raises.
    Exactly one side runs at a time, so the result is that of an ordinary call.
    """

    def __init__(self, schedule, prediction: str):
        self._outputs: queue.SimpleQueue = queue.SimpleQueue()  # caller -> worker
        self._events: queue.SimpleQueue = queue.SimpleQueue()  # worker -> caller
        self._thread: threading.Thread | None = None
        self._ended = False  # the worker has finished or failed: no evaluation is pending
        # float64 "network dtype": the network receives dode's state itself and returns the pipeline's
        # output; the cast to the UNet's dtype happens in the pipeline, as it would in dode's own Denoiser
        self.denoiser = dode.Denoiser(self.network, schedule, prediction, dtype=torch.float64)

    def network(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._events.put(("evaluate", x, float(t[0])))
        out = self._outputs.get()
        if out is _CANCEL:
            raise _Cancelled
        return out

    def start(self, noise: torch.Tensor, **kwargs) -> None:
        self._check_pending()
        self._thread = threading.Thread(
            target=self._work, args=(noise,), kwargs=kwargs, daemon=True, name="dode-scheduler"
        )
        self._thread.start()
        kind, _, _ = self._receive()  # the first evaluation, at the noise itself
        if kind != "evaluate":
            raise AssertionError(f"internal error: dode's run began with {kind!r}")

    def _work(self, noise: torch.Tensor, **kwargs) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread; the worker never needs a graph
                x = dode.sample(self.denoiser, noise, **kwargs)
        except _Cancelled:
            return
        except BaseException as err:  # handed to the caller, raised there
            self._events.put(("error", err, None))
            return
        self._events.put(("done", x, None))

    def _receive(self):
        kind, value, t = self._events.get()
        self._ended = kind != "evaluate"
        if kind == "error":
            raise value
        return kind, value, t

    def _check_pending(self) -> None:
        if self._ended:
            raise RuntimeError(
                "this run has ended or failed; call set_timesteps(num_inference_steps) to start a new one"
            )

    def advance(self, model_output: torch.Tensor):
        """Give the pending evaluation its output; wait for the next evaluation's input or the end."""
        self._check_pending()
        self._outputs.put(model_output)
        return self._receive()

    def cancel(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._outputs.put(_CANCEL)
            self._thread.join()


# ---------------------------------------------------------------------------------------------- lambdas
def _as_lambdas(lambdas) -> dode.Lambdas | None:
    if lambdas is None or isinstance(lambdas, dode.Lambdas):
        return lambdas
    if isinstance(lambdas, dict):
        return _lambdas_from_json(lambdas)
    raise TypeError(
        "lambdas must be a dode.Lambdas, its JSON form from a scheduler config (a dict) or None, "
        f"got {type(lambdas).__name__}"
    )


def _lambdas_to_json(lam: dode.Lambdas) -> dict:
    """The JSON form of ``lam`` for a scheduler config: its metadata, values (NaN as null) and landing times."""
    return {
        **lam.metadata(),
        "values": [[None if np.isnan(v) else float(v) for v in row] for row in lam.values],
        "landing_times": None if lam.landing_times is None else [float(t) for t in lam.landing_times],
        "info": lam.info,
    }


def _lambdas_from_json(data: dict) -> dode.Lambdas:
    meta = {k: v for k, v in data.items() if k not in ("values", "landing_times", "info")}
    values = np.array([[np.nan if v is None else v for v in row] for row in data["values"]], dtype=np.float64)
    return dode.Lambdas(values, landing_times=data.get("landing_times"), info=data.get("info"), **meta)


def _grid_from_key(key: str):
    """The grid spec a fitted Lambdas' ``grid`` (:func:`dode.grids.grid_key`) stands for."""
    if key == "None":
        return None
    if key in dode.GRIDS:
        return key
    return json.loads(key)


# ---------------------------------------------------------------------------------------------- fitting
def fit_lambdas(
    pipe_or_unet,
    scheduler_config: dict | None = None,
    *,
    solver: str = "ddim",
    nfe: int = 10,
    n: int = 100,
    K: int = 10,
    seed: int = 0,
    grid=None,
    **distill_options,
) -> dode.Lambdas:
    """Fit the D-ODE lambdas of ``solver`` at ``nfe`` for a pipeline's UNet (closed form, :func:`dode.distill`).

    Parameters
    ----------
    pipe_or_unet: a diffusers pipeline with ``unet`` and ``scheduler`` (an unconditional ``UNet2DModel``),
        or the ``UNet2DModel`` itself together with ``scheduler_config``.
    scheduler_config: the scheduler config that gives the noise schedule and prediction type (default: the
        pipeline's ``scheduler.config``).
    n: the fitting batch, ``n`` standard normal noises drawn on the CPU with ``seed``, moved to the UNet's
        device.
    K: the teacher takes K times more steps.
    distill_options: further arguments of :func:`dode.distill` (``teacher``, ``variant``, solver options...).

    For a guided or otherwise conditioned model, wrap the combined network in a :class:`dode.Denoiser`
    yourself (schedule: :func:`dode.zoo.vp_schedule_from_scheduler_config`) and call :func:`dode.distill`.
    """
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    if not isinstance(unet, UNet2DModel):
        raise TypeError(
            "pipe_or_unet must be a diffusers UNet2DModel or a pipeline whose unet is one, "
            f"got {type(unet).__name__} (for other networks build a dode.Denoiser and call dode.distill)"
        )
    if scheduler_config is None:
        if not hasattr(pipe_or_unet, "scheduler"):
            raise ValueError("scheduler_config is required when pipe_or_unet is a UNet, not a pipeline")
        scheduler_config = pipe_or_unet.scheduler.config
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (the fitting batch), got {n!r}")
    noise = torch.randn(n, cfg.in_channels, *size, generator=torch.Generator().manual_seed(seed))
    den = diffusers_denoiser(unet, scheduler_config)
    return dode.distill(
        den, noise.to(unet.device), solver=solver, nfe=nfe, K=K, grid=grid, seed=seed, **distill_options
    )
