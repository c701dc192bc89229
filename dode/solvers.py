"""The base ODE solvers: each one's plan (the times it visits) and its whole update rule, in one class.

Notation (book/method.md, base solvers): a step goes from ``s`` to ``t``; ``alpha``, ``sigma`` are the
schedule's coefficients, ``half_logsnr = log(alpha / sigma)`` (the method chapter's ``ell``),
``h = half_logsnr_t - half_logsnr_s`` and ``sigma_hat = sigma / alpha``. In the rescaled variables
``x_hat = x / alpha`` the probability-flow ODE is ``d x_hat / d sigma_hat = eps(x, t)`` on every schedule, which
is why one set of formulas serves VP and EDM: DDIM is Euler's method in ``sigma_hat`` (exact exponential
integrator for constant ``eps``), and EDM's Heun method is Heun's method in ``sigma_hat``.

A solver never loops over time. The sampling loop (:func:`dode.sampling.run`) calls ``solver.step`` once
per step. Each network evaluation in a step is one call ``evaluate(x, at, lands, update, combine=None)``: the
network at state ``x`` and time ``at``; a multistep solver's ``combine`` turns that raw output (in the
solver's ``space``) into the solver's estimate, keeping the history it needs; the D-ODE transform corrects the
estimate; ``update``, an affine map, takes the corrected estimate to the state at time ``lands``.
``evaluate`` returns that state and the corrected estimate (in the solver's ``space``), which later stages of
a singlestep step use. So a solver states its whole rule -- stages, history, combination, updates -- in its
``step``; the D-ODE transform, the distillation fit, recording and NFE accounting live once, in the hook
(:mod:`dode.sampling`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from dode.grids import make_grid
from dode.schedules import Schedule

__all__ = [
    "Point",
    "Step",
    "Plan",
    "SOLVERS",
    "get_solver",
    "make_plan",
    "dpm_solver_orders",
    "history_lengths",
]


# ----------------------------------------------------------------------------------------------------------
# Plans: the times a run visits, fixed before it starts (so distillation knows every landing time up front)


@dataclass(frozen=True)
class Point:
    """A model time with its schedule coefficients (float64 scalars)."""

    t: float
    alpha: float
    sigma: float

    @property
    def half_logsnr(self) -> float:
        """``log(alpha / sigma)`` (the method chapter's ``ell``); ``+inf`` where sigma = 0."""
        return math.inf if self.sigma == 0 else math.log(self.alpha / self.sigma)

    @property
    def sigma_hat(self) -> float:
        return self.sigma / self.alpha

    @classmethod
    def at(cls, schedule: Schedule, t: float) -> Point:
        t_ = torch.tensor([float(t)], dtype=torch.float64)
        return cls(float(t), float(schedule.alpha(t_)[0]), float(schedule.sigma(t_)[0]))


@dataclass(frozen=True)
class Step:
    """One solver step from ``s`` to ``t``.

    ``stages`` holds the landing point of each network evaluation of the step (the last is ``t``, except
    for EDM's Heun step whose two stages both land at ``t``). ``weights`` are the combination weights over
    the history that iPNDM, DEIS and DPM-Solver++ fix when the plan is made, most recent first (their
    number is how many outputs the step combines: :func:`history_lengths`).
    """

    index: int
    s: Point
    t: Point
    order: int
    stages: tuple[Point, ...]
    weights: tuple[float, ...] = ()
    # UniPC's corrector (:class:`UniPC`): its weights over the outputs, newest first (empty: no corrector),
    # and the grid point its re-solved step starts from
    corrector: tuple[float, ...] = ()
    before: Point | None = None


@dataclass(frozen=True)
class Plan:
    solver: str
    nfe: int
    grid: object  # the grid spec as given: a name or an explicit tensor
    # the grid's model times: the start, then each step's end (DPM-Solver with its stages on the grid: each stage's)
    times: torch.Tensor
    steps: tuple[Step, ...]
    options: dict = field(default_factory=dict)

    @property
    def start(self) -> Point:
        return self.steps[0].s

    @property
    def landing_times(self) -> list[float]:
        """The model time each network evaluation lands on, in evaluation order."""
        return [p.t for st in self.steps for p in st.stages]


# ----------------------------------------------------------------------------------------------------------
# The update formula several solvers share (float64 tensors; affine in the denoising output)


def ddim_update(x: torch.Tensor, s: Point, t: Point, eps: torch.Tensor) -> torch.Tensor:
    """DDIM (paper Eq. 11): ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps``.

    Written as ``alpha_t * (x_s/alpha_s + (sigma_hat_t - sigma_hat_s) eps)``, i.e. Euler in sigma_hat, which is
    the same number and stays finite when ``sigma_t = 0``.
    """
    return (t.alpha / s.alpha) * x + t.alpha * (t.sigma_hat - s.sigma_hat) * eps


def data_update(x: torch.Tensor, s: Point, t: Point, x0: torch.Tensor) -> torch.Tensor:
    """The exponential integrator's first-order step in data prediction (DPM-Solver++'s, Lu et al. 2022b):
    ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) x0``; at ``sigma_t = 0`` it is ``alpha_t x0``."""
    return (t.sigma / s.sigma) * x - t.alpha * math.expm1(-(t.half_logsnr - s.half_logsnr)) * x0


def _phi(s: Point, t: Point) -> float:
    """``sigma_t (e^h - 1)`` for finite ``h``."""
    return t.sigma * math.expm1(t.half_logsnr - s.half_logsnr)


def _first_stage(x: torch.Tensor, s: Point, s_i: Point, eps: torch.Tensor) -> torch.Tensor:
    """DPM-Solver's first stage to ``s_i``: ``(alpha_si/alpha_s) x_s - sigma_si (e^(r_i h) - 1) eps_s`` (Eq. 26)."""
    return (s_i.alpha / s.alpha) * x - _phi(s, s_i) * eps


def _push(history: list, newest: torch.Tensor, keep: int) -> list:
    """Put ``newest`` in front of a multistep solver's ``history`` (newest first), keeping ``keep`` outputs."""
    history.insert(0, newest)
    del history[keep:]
    return history


def _weighted(weights, outputs) -> torch.Tensor:
    return sum(w * e for w, e in zip(weights, outputs))


#: below this many steps ``lower_order_final`` lowers the last steps (diffusers' multistep schedulers' bound)
LOWER_ORDER_FINAL_BELOW = 15


def history_lengths(
    n_steps: int, full: int, lower_order_final: bool, below: int | None = LOWER_ORDER_FINAL_BELOW
) -> list[int]:
    """How many outputs each step of a multistep solver combines (book/method.md, first and last steps).

    Step ``i`` of ``n_steps`` takes ``min(full, i + 1)``: fewer while the history is short (the warm start).
    With ``lower_order_final`` and fewer than ``below`` steps (None: any number) it also takes at most
    ``n_steps - i``: the last step one output (DDIM's update), the one before at most two, ... -- the warm
    start mirrored, as diffusers' multistep schedulers lower their final steps (``lower_order_final``:
    UniPC's ``min(order, steps left)`` at any number of steps, which DEIS's and DPM-Solver's multistep
    schedulers spell out for order <= 3 below 15 steps). A full-order last step extrapolates the polynomial
    through the last outputs over the last interval, which on a time-uniform grid spans most of the
    noise-level change near t = 0 (notebook 02 measures what that costs).
    """
    lower = lower_order_final and (below is None or n_steps < below)
    return [min(full, i + 1, n_steps - i) if lower else min(full, i + 1) for i in range(n_steps)]


class Solver:
    """Base class: ``space`` is the prediction type the update formula (and a multistep combination) uses.

    ``step(evaluate, x, st, history)`` takes one planned step from ``x`` and returns the new state. Each of its
    network evaluations is one call ``evaluate(x, at, lands, update, combine=None)`` (see the module
    docstring); ``history`` is a list the loop starts empty for every run and hands to every step, where a
    multistep solver keeps its earlier raw outputs.
    """

    name: str
    space: str = "eps"
    defaults: dict = {}
    teacher_ok = True  # one stage ends on each grid point, so it can serve as a distillation teacher

    def check_options(self, options: dict) -> dict:
        unknown = set(options) - set(self.defaults)
        if unknown:
            allowed = sorted(self.defaults) or "none"
            raise ValueError(f"solver {self.name!r} takes options {allowed}, got unknown {sorted(unknown)}")
        options = {**self.defaults, **options}
        if "lower_order_final" in options and not isinstance(options["lower_order_final"], bool):
            raise ValueError(
                f"lower_order_final must be True or False for solver {self.name!r}, "
                f"got {options['lower_order_final']!r}"
            )
        return options

    def orders(self, nfe: int, ends_at_zero: bool, options: dict) -> list[int]:
        """Order (stages for singlestep solvers) of each step; their sum of stages must equal the NFE."""
        _check_nfe(self.name, nfe)
        return [1] * nfe

    def nfe_for_steps(self, n_steps: int, ends_at_zero: bool, options: dict) -> int:
        return n_steps

    def grid_intervals(self, orders: list[int], options: dict) -> int:
        """How many intervals the run's grid has: one per step (singlestep DPM-Solver may put its stages on
        the grid too)."""
        return len(orders)

    def build_steps(
        self, schedule: Schedule, times: torch.Tensor, orders: list[int], options: dict
    ) -> list[Step]:
        points = [Point.at(schedule, float(t)) for t in times]
        return [Step(i, points[i], points[i + 1], o, (points[i + 1],)) for i, o in enumerate(orders)]

    def step(self, evaluate, x: torch.Tensor, st: Step, history: list) -> torch.Tensor:
        raise NotImplementedError


def _check_nfe(name: str, nfe, minimum: int = 1) -> None:
    if not isinstance(nfe, (int, np.integer)) or isinstance(nfe, bool) or nfe < minimum:
        raise ValueError(f"nfe must be an integer >= {minimum} for solver {name!r}, got {nfe!r}")


class DDIM(Solver):
    """DDIM (Song et al. 2021; paper Eq. 11/17), = Euler in sigma on EDM models ("DDIM in sigma", Eq. 37-38).

    Its update is written with ``eps`` but reads the same with ``x0``; the D-ODE transform acts in the model's
    native prediction type (Eq. 12 for noise, Eq. 39-41 for data prediction) before the conversion.
    """

    name = "ddim"

    def step(self, evaluate, x, st, history):
        x_next, _ = evaluate(x, st.s, st.t, partial(ddim_update, x, st.s, st.t))
        return x_next


# iPNDM's Adams-Bashforth weights (Zhang & Chen 2023; paper Eq. 20-24), by the number of outputs combined
_IPNDM_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class IPNDM(Solver):
    """iPNDM (Zhang & Chen 2023; paper Eq. 20-24): DDIM fed with the fixed Adams-Bashforth combination of the
    last outputs, lower orders while the history is short (``Step.weights``, fixed by the plan).

    The combination is the solver's estimate ``eps'``, the one the D-ODE transform acts on (Eq. 25); the
    history holds the raw outputs. The fixed weights are the exact AB weights only for steps uniform in
    sigma_hat, the variable DDIM's update integrates ``eps`` in; there iPNDM converges at order ~4. On the
    usual non-uniform grids (time-uniform, logSNR, EDM's rho) they are first-order accurate in the step
    ratio, so iPNDM converges at order ~2 (tests/test_solvers.py measures both). Weights recomputed for the
    actual steps would be DEIS's rhoAB.

    ``lower_order_final`` (default False, as the authors' code and the paper run it: the last step combines
    four outputs like every other): below 15 steps the last steps combine at most 1, 2, 3 outputs, the
    warm start mirrored (:func:`history_lengths`; book/method.md, first and last steps).
    """

    name = "ipndm"
    defaults = {"lower_order_final": False}

    def build_steps(self, schedule, times, orders, options):
        steps = super().build_steps(schedule, times, orders, options)
        lengths = history_lengths(len(steps), len(_IPNDM_WEIGHTS), options["lower_order_final"])
        return [_with_weights(st, _IPNDM_WEIGHTS[n]) for st, n in zip(steps, lengths, strict=True)]

    def step(self, evaluate, x, st, history):
        def combine(eps):  # raw outputs e_0 (this one), e_1, e_2, e_3
            return _weighted(st.weights, _push(history, eps, keep=len(st.weights)))

        x_next, _ = evaluate(x, st.s, st.t, partial(ddim_update, x, st.s, st.t), combine)
        return x_next


class DEIS(Solver):
    """DEIS tAB of order r (Zhang & Chen 2023; paper Eq. 33-36).

    ``x_t = (alpha_t/alpha_s) x_s + sum_j C_j eps_j`` with ``C_j = alpha_t * integral of L_j(tau) d sigma_hat``
    over the step, ``L_j`` the Lagrange basis in the model time ``tau`` through the last ``r + 1`` evaluation
    times. Since ``sum_j L_j = 1``, ``sum_j C_j`` is DDIM's coefficient, so DEIS is DDIM fed with the estimate
    ``eps' = sum_j w_j eps_j`` where ``w_j`` = mean of ``L_j`` over the step in sigma_hat (fixed by the plan:
    ``Step.weights``, fewer while the history is short). r = 0 is DDIM. The D-ODE transform acts on
    ``eps'`` (Eq. 35-36).

    ``lower_order_final`` (default False, as the authors' code and the paper run it: the last step
    interpolates through r + 1 outputs like every other): below 15 steps the last steps interpolate through
    at most 1, 2, ... outputs, the warm start mirrored (:func:`history_lengths`), as diffusers'
    ``DEISMultistepScheduler`` lowers its last two steps.
    """

    name = "deis"
    defaults = {"order": 3, "lower_order_final": False}

    def check_options(self, options):
        options = super().check_options(options)
        if options["order"] not in (1, 2, 3):
            raise ValueError(f"order must be one of 1, 2, 3 for solver 'deis', got {options['order']!r}")
        return options

    def build_steps(self, schedule, times, orders, options):
        steps = super().build_steps(schedule, times, orders, options)
        lengths = history_lengths(len(steps), options["order"] + 1, options["lower_order_final"])
        out = []
        for st, n in zip(steps, lengths, strict=True):
            nodes = [steps[st.index - j].s.t for j in range(n)]
            out.append(_with_weights(st, tuple(_deis_weights(schedule, st.s, st.t, nodes))))
        return out

    def step(self, evaluate, x, st, history):
        def combine(eps):  # raw outputs at the last r + 1 evaluation times, newest first
            return _weighted(st.weights, _push(history, eps, keep=len(st.weights)))

        x_next, _ = evaluate(x, st.s, st.t, partial(ddim_update, x, st.s, st.t), combine)
        return x_next


def _with_weights(st: Step, weights) -> Step:
    return Step(st.index, st.s, st.t, st.order, st.stages, tuple(float(w) for w in weights))


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(8)


def _deis_weights(schedule: Schedule, s: Point, t: Point, nodes: list[float]) -> np.ndarray:
    """Mean over the step (in sigma_hat) of each Lagrange basis polynomial through ``nodes`` (in model time).

    Composite Gauss-Legendre in sigma_hat, split where the schedule has kinks (integer indices of a
    discrete VP schedule), so the quadrature is accurate to rounding.
    """
    nodes_arr = np.asarray(nodes, dtype=np.float64)
    if len(nodes_arr) == 1:
        return np.ones(1)
    edges_t = [s.t, *sorted(schedule.breakpoints(s.t, t.t), reverse=True), t.t]
    edges = schedule.sigma_hat(torch.tensor(edges_t, dtype=torch.float64)).numpy()
    a, b = edges[:-1, None], edges[1:, None]  # one row per smooth piece
    sig = 0.5 * (a + b) + 0.5 * (b - a) * _GAUSS_NODES
    wq = (0.5 * (b - a) * _GAUSS_WEIGHTS).reshape(-1)
    tau = schedule.t_from_sigma_hat(torch.from_numpy(sig.reshape(-1))).numpy()
    acc = np.empty(len(nodes_arr))
    for j in range(len(nodes_arr)):
        others = np.delete(nodes_arr, j)
        basis = np.prod((tau[:, None] - others) / (nodes_arr[j] - others), axis=1)
        acc[j] = basis @ wq
    return acc / (edges[-1] - edges[0])


class DPMSolverPP(Solver):
    """DPM-Solver++(2M) (Lu et al. 2022b), in data prediction form:
    ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) D``, ``D = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev``,
    ``r = h_prev / h``. The first step, and a step into sigma = 0 (where h is infinite), are first order
    (``Step.weights`` holds the two weights, or just 1). The D-ODE transform acts on ``D``.

    ``lower_order_final`` (default True, as the authors' code and diffusers ship it): below 15 steps the last
    step is first order too. The second-order last step extrapolates over the run's largest logSNR step
    (r << 1 on time-uniform grids): on the exact Gaussian mixture at NFE 10 it nearly doubles the distance
    to the exact solution (tests/test_peers.py); notebook 13 shows dode's and diffusers' DPM-Solver++ on
    digits. ``lower_order_final=False`` restores the second-order last step."""

    name = "dpm_solver++"
    space = "x0"
    defaults = {"lower_order_final": True}

    def build_steps(self, schedule, times, orders, options):
        steps = super().build_steps(schedule, times, orders, options)
        out = []
        lengths = history_lengths(len(steps), 2, options["lower_order_final"])
        for st, n in zip(steps, lengths, strict=True):
            if n == 1 or st.t.sigma == 0:
                weights = (1.0,)
            else:
                prev = steps[st.index - 1]
                r = (prev.t.half_logsnr - prev.s.half_logsnr) / (st.t.half_logsnr - st.s.half_logsnr)
                weights = (1 + 1 / (2 * r), -1 / (2 * r))
            out.append(_with_weights(st, weights))
        return out

    def step(self, evaluate, x, st, history):
        s, t = st.s, st.t

        def combine(x0):  # raw data predictions x0_s, x0_prev
            return _weighted(st.weights, _push(history, x0, keep=2))

        x_next, _ = evaluate(x, s, t, partial(data_update, x, s, t), combine)
        return x_next


#: UniPC's choices of ``B(h)`` (Zhao et al. 2023, Sec. 3.3), in data prediction (``hh = -h``): ``bh1`` is
#: ``hh``, ``bh2`` is ``e^hh - 1``
UNIPC_TYPES = ("bh1", "bh2")


def _unipc_rhs(hh: float, b_h: float, n: int) -> np.ndarray:
    """UniPC's ``b_k = k! phi_(k+1)(hh) / B(h)``, k = 1..n, by the recursion ``phi_(k+1) = (phi_k - 1/k!) / hh``
    of the exponential integrator's phi functions (Zhao et al. 2023, Alg. 2 and 3)."""
    phi, factorial, out = math.expm1(hh) / hh - 1, 1, []
    for k in range(1, n + 1):
        out.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1 / factorial
    return np.array(out)


def _unipc_weights(
    solver_type: str, s: Point, t: Point, older: list[Point], corrector: bool
) -> tuple[float, ...]:
    """The weights of UniPC's combined data prediction ``D`` in ``data_update(x_s, s, t, D)``.

    UniP (``corrector`` False) extrapolates from the output at ``s`` and those at the ``older`` points
    (newest first): weights over ``(m_s, m_older...)``. UniC (``corrector`` True) re-solves the step from
    ``s`` to ``t`` with the output at ``t`` added: weights over ``(m_t, m_s, m_older...)``. Each update is
    ``(sigma_t/sigma_s) x_s - alpha_t (e^-h - 1) m_s - alpha_t B(h) sum_k rho_k (m_k - m_s) / r_k``
    (Zhao et al. 2023, Alg. 2-3, data prediction), ``r_k = (ell_k - ell_s) / h``, with diffusers' choices:
    ``rho = 1/2`` for UniP-2 and UniC-1, the linear systems otherwise. Divided by ``e^-h - 1`` it is one
    weighted sum whose weights add up to 1.
    """
    h = t.half_logsnr - s.half_logsnr
    if math.isinf(h) or (not older and not corrector):
        return (1.0,)
    hh = -h
    b_h = hh if solver_type == "bh1" else math.expm1(hh)
    gain = b_h / math.expm1(hh)
    r = np.array([(p.half_logsnr - s.half_logsnr) / h for p in older])
    n = len(older) + 1
    if corrector:
        nodes = np.append(r, 1.0)
        rho = (
            np.array([0.5])
            if n == 1
            else np.linalg.solve(np.vander(nodes, n, True).T, _unipc_rhs(hh, b_h, n))
        )
        w_older = gain * rho[:-1] / r
        w_new = gain * rho[-1]
        return (float(w_new), float(1 - w_new - w_older.sum()), *map(float, w_older))
    rho = (
        np.array([0.5])
        if n == 2
        else np.linalg.solve(np.vander(r, n - 1, True).T, _unipc_rhs(hh, b_h, n - 1))
    )
    w_older = gain * rho / r
    return (float(1 - w_older.sum()), *map(float, w_older))


class UniPC(Solver):
    """UniPC (Zhao et al. 2023), as diffusers' ``UniPCMultistepScheduler`` runs it: data prediction, B(h)
    of type ``bh1`` or ``bh2`` (``solver_type``), predictor UniP of ``order`` 1-3 (default 2) and the
    corrector UniC after every step but the last, one network evaluation per step.

    Step ``i`` evaluates the network at the state ``x_i`` UniP landed on. UniC then re-solves the previous
    step from its corrected start ``x^c_(i-1)`` with that output ``m_i`` added, giving ``x^c_i``; UniP goes
    from ``x^c_i`` to ``x_(i+1)`` by extrapolating ``m_i`` and the earlier outputs. Both are
    :func:`data_update` with a combination of the outputs whose weights the plan fixes (``Step.corrector``,
    ``Step.weights``: :func:`_unipc_weights`), so the step's whole map from ``m_i`` to ``x_(i+1)`` is affine
    in ``m_i``. UniC of step ``i`` has UniP's order of step ``i - 1`` (the outputs it had, plus ``m_i``).

    The D-ODE transform acts on ``m_i``, the network output at the corrector's point (paper Eq. 10, in the
    model's native prediction type): it is the only new information of the step, both the corrector and the
    predictor read it, and the state that depends on it through the affine map is the next one the network
    sees, so the closed-form fit matches ``x_(i+1)`` to the teacher as for every other solver. The history
    keeps the raw outputs (as iPNDM's, DEIS's and DPM-Solver++'s do): ``lambda_i`` acts on step ``i``'s
    corrector and predictor, and the next corrector re-solves from the corrected start it produced.

    ``lower_order_final`` (default True, diffusers' default): the last steps have order at most the steps
    left, at any number of steps (diffusers' UniPC has no 15-step bound, unlike :func:`history_lengths`'s
    default). A step into sigma = 0 (EDM schedules) is first order: ``h`` is infinite there (diffusers
    returns NaN for ``bh1``, whose ``B(h) = -h``, and inf or a singular system for any order above 1, where
    ``r = 0``).
    """

    name = "unipc"
    space = "x0"
    defaults = {"order": 2, "solver_type": "bh2", "lower_order_final": True}

    def check_options(self, options):
        options = super().check_options(options)
        if options["order"] not in (1, 2, 3):
            raise ValueError(f"order must be one of 1, 2, 3 for solver 'unipc', got {options['order']!r}")
        if options["solver_type"] not in UNIPC_TYPES:
            raise ValueError(
                f"solver_type must be one of {UNIPC_TYPES} for solver 'unipc', got {options['solver_type']!r}"
            )
        return options

    def build_steps(self, schedule, times, orders, options):
        steps = super().build_steps(schedule, times, orders, options)
        lengths = history_lengths(len(steps), options["order"], options["lower_order_final"], below=None)
        lengths = [1 if st.t.sigma == 0 else n for st, n in zip(steps, lengths, strict=True)]
        kind = options["solver_type"]
        out = []
        for st, n in zip(steps, lengths, strict=True):
            weights = _unipc_weights(kind, st.s, st.t, [steps[st.index - k].s for k in range(1, n)], False)
            corrector, before = (), None
            if st.index > 0:
                prev = steps[st.index - 1]
                older = [steps[prev.index - k].s for k in range(1, lengths[prev.index])]
                corrector, before = _unipc_weights(kind, prev.s, prev.t, older, True), prev.s
            out.append(Step(st.index, st.s, st.t, st.order, st.stages, weights, corrector, before))
        return out

    def step(self, evaluate, x, st, history):
        # history: (corrected state, raw data prediction) at the earlier grid points, newest first
        outputs = [m for _, m in history]

        def start(m):  # UniC: the state at s, the previous step re-solved with the output m at s
            if not st.corrector:
                return x
            return data_update(history[0][0], st.before, st.s, _weighted(st.corrector, [m, *outputs]))

        def update(m):  # UniP from the corrected start
            return data_update(start(m), st.s, st.t, _weighted(st.weights, [m, *outputs]))

        raw = []

        def keep_raw(m):  # the estimate is the output itself; the history keeps it uncorrected
            raw.append(m)
            return m

        x_next, corrected = evaluate(x, st.s, st.t, update, keep_raw)
        # the next step's corrector needs as many outputs as this step's predictor combined
        _push(history, (start(corrected), raw[0]), keep=len(st.weights))
        return x_next


#: where singlestep DPM-Solver's intermediate stages land (:class:`DPMSolver`)
STAGE_TIMES = ("grid", "logsnr")


def dpm_solver_orders(nfe: int, order: int) -> list[int]:
    """DPM-Solver's singlestep composition: orders whose stages add up to exactly ``nfe`` (Lu et al. 2022a)."""
    if order == 3:
        k = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if nfe % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    return [1] * nfe


class DPMSolver(Solver):
    """Singlestep DPM-Solver-1/2/3 (Lu et al. 2022a; paper Eq. 26-32), orders composed to hit the NFE.

    Where the intermediate stages land (``stage_times``; book/method.md, first and last steps):

    * ``"grid"`` (default, as the authors' code places them on every grid but its logSNR one, and as the
      D-ODE authors' code and diffusers' DPMSolverSinglestepScheduler run it): the grid has one interval per
      network evaluation; a step of order k spans k consecutive intervals and its stages land on the grid
      points inside it, so ``r_i = (ell_si - ell_s) / h`` follows from the grid.
    * ``"logsnr"``: the grid has one interval per step and the stages sit at the fixed fractions
      ``r = 1/2`` or ``r = 1/3, 2/3`` of the step's half-logSNR interval (Eq. 26-32 as the paper writes
      them; the authors' code does this on its logSNR grid).

    The update rules are the general-``r`` ones (the method chapter, base solvers), so both placements share
    them. A step into sigma = 0 (EDM schedules) has infinite ``h`` and is taken with order 1. Each stage's
    output gets its own D-ODE transform (Eq. 29-32), and the corrected ``eps_s`` that ``evaluate`` returns is
    the one the later stages of the step use.
    """

    name = "dpm_solver"
    defaults = {"order": 3, "stage_times": "grid"}
    teacher_ok = False

    def check_options(self, options):
        options = super().check_options(options)
        if options["order"] not in (1, 2, 3):
            raise ValueError(
                f"order must be one of 1, 2, 3 for solver 'dpm_solver', got {options['order']!r}"
            )
        if options["stage_times"] not in STAGE_TIMES:
            raise ValueError(
                f"stage_times must be one of {STAGE_TIMES} for solver 'dpm_solver', got {options['stage_times']!r}"
            )
        return options

    def orders(self, nfe, ends_at_zero, options):
        _check_nfe(self.name, nfe)
        orders = dpm_solver_orders(nfe, options["order"])
        if ends_at_zero and orders[-1] != 1:
            orders = dpm_solver_orders(nfe - 1, options["order"]) + [1]
        return orders

    def nfe_for_steps(self, n_steps, ends_at_zero, options):
        if options["stage_times"] == "grid":  # one grid interval per network evaluation
            return n_steps
        raise ValueError(
            "dpm_solver with stage_times='logsnr' composes its steps from the NFE; give nfe, not only an explicit grid"
        )

    def grid_intervals(self, orders, options):
        return sum(orders) if options["stage_times"] == "grid" else len(orders)

    def build_steps(self, schedule, times, orders, options):
        points = [Point.at(schedule, float(t)) for t in times]
        steps, k = [], 0  # k: the grid point the step starts from
        for i, order in enumerate(orders):
            s = points[k]
            if options["stage_times"] == "grid":
                stages = tuple(points[k + 1 : k + order + 1])
                k += order
            else:
                t = points[k + 1]
                h = t.half_logsnr - s.half_logsnr
                inner = [
                    Point.at(
                        schedule,
                        float(schedule.t_from_half_logsnr(torch.tensor(s.half_logsnr + j / order * h))),
                    )
                    for j in range(1, order)
                ]
                stages = (*inner, t)
                k += 1
            steps.append(Step(i, s, stages[-1], order, stages))
        return steps

    def step(self, evaluate, x, st, history):
        s, t = st.s, st.t
        if st.order == 1:
            x_next, _ = evaluate(x, s, t, partial(ddim_update, x, s, t))
            return x_next
        h = t.half_logsnr - s.half_logsnr
        if st.order == 2:  # Eq. 26-28 with r1 from the stage's time
            s1 = st.stages[0]
            r1 = (s1.half_logsnr - s.half_logsnr) / h
            u, eps_s = evaluate(x, s, s1, partial(_first_stage, x, s, s1))

            def second_stage(e1):
                return (t.alpha / s.alpha) * x - _phi(s, t) * eps_s - _phi(s, t) / (2 * r1) * (e1 - eps_s)

            x_next, _ = evaluate(u, s1, t, second_stage)
            return x_next
        s1, s2 = st.stages[0], st.stages[1]  # Eq. 30-32 with r1, r2 from the stages' times
        r1, r2 = ((p.half_logsnr - s.half_logsnr) / h for p in (s1, s2))
        u1, eps_s = evaluate(x, s, s1, partial(_first_stage, x, s, s1))
        c2 = s2.sigma * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)

        def second_stage(e1):
            return (s2.alpha / s.alpha) * x - _phi(s, s2) * eps_s - c2 * (e1 - eps_s)

        u2, _ = evaluate(u1, s1, s2, second_stage)
        c3 = (t.sigma / r2) * (math.expm1(h) / h - 1)

        def third_stage(e2):
            return (t.alpha / s.alpha) * x - _phi(s, t) * eps_s - c3 * (e2 - eps_s)

        x_next, _ = evaluate(u2, s2, t, third_stage)
        return x_next


class EDMHeun(Solver):
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1; paper Eq. 42-45): Heun's method in sigma_hat.

    Euler predictor to ``x'``, then the trapezoid corrector with the output at ``(x', t)``; the last step is
    Euler only (on EDM schedules it ends at sigma = 0), so N grid steps cost 2N - 1 evaluations.
    Like DDIM, the D-ODE transform acts in the model's native prediction type (Eq. 46-51 for data
    prediction); the corrector uses the predictor's corrected ``eps_s``.
    """

    name = "edm"

    def orders(self, nfe, ends_at_zero, options):
        _check_nfe(self.name, nfe)
        if nfe % 2 == 0:
            raise ValueError(f"nfe must be odd for solver 'edm' (Heun: NFE = 2N - 1 for N steps), got {nfe}")
        n_steps = (nfe + 1) // 2
        return [2] * (n_steps - 1) + [1]

    def nfe_for_steps(self, n_steps, ends_at_zero, options):
        return 2 * n_steps - 1

    def build_steps(self, schedule, times, orders, options):
        points = [Point.at(schedule, float(t)) for t in times]
        return [Step(i, points[i], points[i + 1], o, (points[i + 1],) * o) for i, o in enumerate(orders)]

    def step(self, evaluate, x, st, history):
        s, t = st.s, st.t
        x_pred, eps_s = evaluate(x, s, t, partial(ddim_update, x, s, t))
        if st.order == 1:
            return x_pred

        def trapezoid(e1):
            return (t.alpha / s.alpha) * x + t.alpha * (t.sigma_hat - s.sigma_hat) * 0.5 * (eps_s + e1)

        x_next, _ = evaluate(x_pred, t, t, trapezoid)
        return x_next


SOLVERS: dict[str, Solver] = {
    cls.name: cls() for cls in (DDIM, IPNDM, DEIS, DPMSolver, DPMSolverPP, UniPC, EDMHeun)
}


def get_solver(name: str) -> Solver:
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {name!r}")
    return SOLVERS[name]


def make_plan(
    schedule: Schedule, solver: str, nfe: int | None = None, grid=None, options: dict | None = None
) -> Plan:
    """Every step and stage time of a run, fixed before it starts.

    ``nfe`` may be None only with an explicit grid (the teacher's refined grid), for solvers whose NFE
    follows from the number of steps.
    """
    sol = get_solver(solver)
    options = sol.check_options(dict(options or {}))
    if nfe is None:
        if grid is None or isinstance(grid, str):
            raise ValueError("nfe is required unless an explicit grid is given")
        n_steps = len(torch.as_tensor(grid)) - 1
        nfe = sol.nfe_for_steps(n_steps, schedule.ends_at_zero, options)
    orders = sol.orders(nfe, schedule.ends_at_zero, options)
    times = make_grid(schedule, grid, sol.grid_intervals(orders, options))
    steps = tuple(sol.build_steps(schedule, times, orders, options))
    n_eval = sum(len(st.stages) for st in steps)
    assert n_eval == nfe, f"internal error: plan of {solver} has {n_eval} evaluations for nfe={nfe}"
    if schedule.ends_at_zero and float(times[-1]) == 0.0 and steps[-1].order != 1:
        raise AssertionError("internal error: a step into sigma = 0 must be first order")
    return Plan(solver, int(nfe), grid, times, steps, options)
