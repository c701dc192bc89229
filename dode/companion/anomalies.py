"""Why some base curves spike at small NFE, or stay flat: the steps of the plan, computed, beside the results.

A multistep solver's full-order last step (iPNDM, DEIS-3; book/method.md, first and last steps) combines
its last outputs with extrapolation weights over the last interval of the grid, which on the time-uniform
grid carries a large share of the fall of the noise level; singlestep DPM-Solver-3's composition ends
with a second-order step over the last two intervals where ``NFE mod 3 = 2``. Everything here is either
computed from the plan (:func:`dode.make_plan`: no sampling) or read from a results file; the pages show the
Markdown these functions return, so that no number or verdict of the explanation is typed by hand.

Page 03's base EDM Heun curve can stay flat between two NFEs: :func:`measure_heun_steps` measures, without the
metric, which step of each plan leaves the samples' error, and stores it in the page's results file, from
which :func:`heun_plateau_note` renders the explanation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from dode.companion.labels import count
from dode.companion.spread import paired_gain, side
from dode.solvers import Plan, make_plan

__all__ = [
    "LOF_PAIRS",
    "last_step",
    "plan_rows",
    "pair_rows",
    "explain_last_step",
    "lof_pair_note",
    "explain_dpm_solver_pattern",
    "summary_spikes",
    "HEUN_VARS",
    "heun_step_errors",
    "measure_heun_steps",
    "heun_rows",
    "heun_plateau_note",
]

#: full-order solver label -> its lower-order-final variant (``experiments.SOLVER_LABELS``)
LOF_PAIRS = {"ipndm": "ipndm_lof", "deis3": "deis3_lof"}
_SIDE = {1: "better", -1: "worse", 0: "inside the noise"}


def _combination(plan: Plan, st) -> tuple[tuple[float, ...], float]:
    """The last step's weights on its outputs (newest first), written as DDIM's update fed with
    ``eps' = sum_j w_j eps_j``, and the half-logSNR span its outputs were evaluated over (0 for one output).

    Multistep: ``Step.weights`` over the last evaluation times. Singlestep DPM-Solver (the method chapter,
    base solvers): order 2 is ``(1 - 1/(2 r1)) eps_s + 1/(2 r1) eps_s1`` (Eq. 28), order 3 is
    ``(1 - c) eps_s + c eps_s2`` with ``c = ((e^h - 1)/h - 1) / (r2 (e^h - 1))`` (Eq. 32)."""
    if st.weights:
        k = st.index
        first = plan.steps[k - len(st.weights) + 1].s
        return st.weights, st.s.half_logsnr - first.half_logsnr
    if st.order == 1:
        return (1.0,), 0.0
    if plan.solver != "dpm_solver":
        raise ValueError(
            f"last_step explains multistep solvers and singlestep DPM-Solver, got {plan.solver!r}"
        )
    h = st.t.half_logsnr - st.s.half_logsnr
    inner = st.stages[st.order - 2]  # the stage whose output the final update uses
    r = (inner.half_logsnr - st.s.half_logsnr) / h
    c = 1 / (2 * r) if st.order == 2 else (math.expm1(h) / h - 1) / (r * math.expm1(h))
    return (c, 1 - c), r * h


def last_step(plan: Plan) -> dict:
    """What a plan's last step does: how many outputs (multistep) or stages (singlestep) each step takes,
    the last step's combination weights and their sum of magnitudes (1 for a single output; larger values
    amplify the differences between outputs), how far it extrapolates (its half-logSNR length over the span
    its outputs cover), and the share of the run's fall of sigma and rise of the half-logSNR it covers."""
    steps = plan.steps
    st = steps[-1]
    weights, span = _combination(plan, st)
    h = st.t.half_logsnr - st.s.half_logsnr
    start, end = plan.start, st.t
    ell_total = end.half_logsnr - start.half_logsnr
    return {
        "pattern": [len(s.weights) for s in steps] if st.weights else [s.order for s in steps],
        "multistep": bool(st.weights),
        "outputs": len(weights) if st.weights else st.order,
        "weights": tuple(float(w) for w in weights),
        "amplification": float(sum(abs(w) for w in weights)),
        "reach": float(h / span) if span > 0 and math.isfinite(h) else math.nan,
        "intervals": len(st.stages) if plan.options.get("stage_times") == "grid" else 1,
        "sigma_share": (st.s.sigma - end.sigma) / (start.sigma - end.sigma),
        "logsnr_share": h / ell_total if math.isfinite(ell_total) else math.nan,
        "sigma_from": st.s.sigma,
        "sigma_to": end.sigma,
    }


def plan_rows(schedule, labels, nfes, grid=None) -> list[dict]:
    """:func:`last_step` of each solver label at each NFE (``nfes``: a list, or a dict label -> list)."""
    from dode.companion.experiments import solver_spec

    rows = []
    for label in labels:
        solver, options = solver_spec(label)
        for nfe in nfes[label] if isinstance(nfes, dict) else nfes:
            rows.append(
                {
                    "solver": label,
                    "nfe": int(nfe),
                    **last_step(make_plan(schedule, solver, nfe, grid, options)),
                }
            )
    return rows


def _metric(ds) -> str:
    return "fid" if "fid" in ds else "fd"


def _values(ds, solver: str, nfe: int, method: str) -> np.ndarray:
    if solver not in ds.coords["solver"].values or method not in ds.coords["method"].values:
        return np.full(ds.sizes.get("seed", 1), np.nan)
    return np.atleast_1d(
        np.asarray(ds[_metric(ds)].sel({"solver": solver, "nfe": nfe, "method": method}).values, float)
    )


def _side(a: np.ndarray, b: np.ndarray) -> int:
    """+1 if ``a`` has the lower metric than ``b`` (paired: same evaluation noise) by the book's spread rule
    (:func:`dode.companion.spread.side`), -1 likewise higher, 0 otherwise."""
    return side(paired_gain(b, a))


def _mean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def pair_rows(ds) -> list[dict]:
    """One row per (full-order solver, NFE) whose lower-order-final variant also ran, base and greedy
    D-solver of both, read from a results file of page 02 (one model). ``finding``:

    * ``repairs the last step``: the D-solver beats the full-order base, but not the lower-order-final base;
    * ``beyond the last step``: it beats both;
    * ``no gain``: it does not beat the full-order base.

    Sides compare paired seeds (:func:`_side`); ``seeds`` is how many the cell has."""
    rows = []
    solvers = ds.coords["solver"].values.tolist()
    for full, lof in LOF_PAIRS.items():
        if full not in solvers or lof not in solvers:
            continue
        for nfe in ds.coords["nfe"].values.tolist():
            v = {
                (label, method): _values(ds, label, nfe, method)
                for label in (full, lof)
                for method in ("base", "d-ode")
            }
            if not (np.isfinite(v[full, "base"]).any() and np.isfinite(v[lof, "base"]).any()):
                continue
            d_vs_full = _side(v[full, "d-ode"], v[full, "base"])
            d_vs_lof = _side(v[full, "d-ode"], v[lof, "base"])
            finding = (
                "no gain"
                if d_vs_full <= 0
                else "beyond the last step"
                if d_vs_lof > 0
                else "repairs the last step"
            )
            rows.append(
                {
                    "solver": full,
                    "nfe": int(nfe),
                    "seeds": int(np.isfinite(v[full, "base"]).sum()),
                    "base": _mean(v[full, "base"]),
                    "base_lof": _mean(v[lof, "base"]),
                    "d": _mean(v[full, "d-ode"]),
                    "d_lof": _mean(v[lof, "d-ode"]),
                    "lof_vs_base": _side(v[lof, "base"], v[full, "base"]),
                    "d_vs_base": d_vs_full,
                    "d_vs_lof": d_vs_lof,
                    "d_lof_vs_lof": _side(v[lof, "d-ode"], v[lof, "base"]),
                    "finding": finding,
                }
            )
    return rows


def _fmt_weights(weights) -> str:
    return "(" + ", ".join(f"{w:.2f}" for w in weights) + ")"


def _name(label: str) -> str:
    from dode.companion.labels import SOLVER_NAMES

    return SOLVER_NAMES.get(label, label)


def _cell(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.2f}"


def _at_nfes(nfes) -> str:
    return "at NFE " + ", ".join(map(str, nfes)) if nfes else "at no NFE"


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:.0f}%"


def explain_last_step(ds, schedule, grid=None) -> str:
    """Markdown for page 02: the last step of iPNDM and DEIS-3 at each NFE of ``ds`` (full order and lower
    order final, computed from the plans on ``schedule``), the metric of base and D-solver in both forms, and
    the verdicts of :func:`pair_rows`, as sentences."""
    var = _metric(ds).upper()
    rows = pair_rows(ds)
    if not rows:
        return (
            "This run has no lower-order-final variant beside its full-order iPNDM or DEIS-3 "
            f"(solver labels {', '.join(LOF_PAIRS.values())}), so it cannot separate the last step from the rest."
        )
    plans = {
        (r["solver"], r["nfe"]): r
        for r in plan_rows(
            schedule, sorted({r["solver"] for r in rows}), sorted({r["nfe"] for r in rows}), grid
        )
    }
    # two tables, each narrow enough for the page: the plans' last steps, then this run's values beside them
    plan_lines = [
        "| solver | NFE | outputs per step | last step's weights | Σ\\|w\\| | σ fall in last step "
        "| logSNR rise in last step |",
        "|---|---|---|---|---|---|---|",
    ]
    value_lines = [
        f"| solver | NFE | base {var} | base, lower-order last step | D-solver "
        "| D-solver, lower-order last step | finding |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = plans[r["solver"], r["nfe"]]
        plan_lines.append(
            f"| {_name(r['solver'])} | {r['nfe']} | {' '.join(map(str, p['pattern']))} "
            f"| {_fmt_weights(p['weights'])} | {p['amplification']:.1f} | {_pct(p['sigma_share'])} "
            f"| {_pct(p['logsnr_share'])} |"
        )
        value_lines.append(
            f"| {_name(r['solver'])} | {r['nfe']} | {r['base']:.2f} | {r['base_lof']:.2f} | {r['d']:.2f} "
            f"| {r['d_lof']:.2f} | {r['finding']} |"
        )
    lines = [*plan_lines, "", *value_lines]
    seeds = min(r["seeds"] for r in rows)
    rule = (
        "one seed: sides are signs, not significant"
        if seeds < 2
        else f"sides over {seeds} paired seeds: better or worse in every seed and by more than the spread"
    )
    text = ["\n".join(lines), "", f"Read from this page's results file ({rule}):", ""]
    for full in dict.fromkeys(r["solver"] for r in rows):
        mine = [r for r in rows if r["solver"] == full]
        repairs = [r for r in mine if r["finding"] == "repairs the last step"]
        beyond = [r for r in mine if r["finding"] == "beyond the last step"]
        name = _name(full)
        parts = [
            f"the full-order base {name} spikes (worse than at both neighbouring NFEs) "
            + _at_nfes(_spikes({r["nfe"]: r["base"] for r in mine}))
            + ", the lower-order-final base "
            + _at_nfes(_spikes({r["nfe"]: r["base_lof"] for r in mine}))
        ]
        for direction, verb in ((1, "improves"), (-1, "worsens")):
            cells = [r for r in mine if r["lof_vs_base"] == direction]
            if cells:
                parts.append(
                    f"the lower-order last step alone {verb} the base {name} at NFE "
                    + ", ".join(f"{r['nfe']} ({r['base']:.2f} → {r['base_lof']:.2f})" for r in cells)
                )
        if not any(r["lof_vs_base"] for r in mine):
            parts.append(f"the lower-order last step leaves the base {name} inside the noise at every NFE")
        shared = [r for r in mine if r["lof_vs_base"] > 0 and r["d_vs_base"] > 0]
        if shared:
            parts.append(
                "of the D-solver's gain over the full-order base, the lower-order last step alone gives "
                + ", ".join(
                    f"{(r['base'] - r['base_lof']) / (r['base'] - r['d']):.0%} at NFE {r['nfe']}"
                    for r in shared
                )
            )
        if repairs:
            parts.append(
                "the D-solver beats the full-order base, but by no more than the lower-order last step does without "
                "any fit (it repairs the last step, a different finding from the paper's) at NFE "
                + ", ".join(
                    f"{r['nfe']} (D {r['d']:.2f}, lower-order base {r['base_lof']:.2f})" for r in repairs
                )
            )
        if beyond:
            parts.append(
                "the D-solver beats the base in both forms at NFE "
                + ", ".join(
                    f"{r['nfe']} (D {r['d']:.2f} against {r['base']:.2f} and {r['base_lof']:.2f})"
                    for r in beyond
                )
            )
        d_lof = [r for r in mine if np.isfinite(r["d_lof"])]
        if d_lof:
            parts.append(
                "with the lower-order last step the D-solver is "
                + ", ".join(
                    f"{_SIDE[direction]} than its base at NFE "
                    + ", ".join(f"{r['nfe']} ({r['base_lof']:.2f} → {r['d_lof']:.2f})" for r in cells)
                    for direction in (1, 0, -1)
                    if (cells := [r for r in d_lof if r["d_lof_vs_lof"] == direction])
                )
            )
        text.append(f"* **{name}**: " + "; ".join(parts) + ".")
    pair = lof_pair_note(ds, schedule, grid)
    return "\n".join(text + ([pair] if pair else []))


def lof_pair_note(ds, schedule, grid=None) -> str:
    """Why the lower-order-final iPNDM and DEIS-3 score alike (a bullet of Markdown; empty when the file lacks
    either): their plans take the same number of outputs at every step and differ only in the extrapolation
    weights of the steps between the first and the last (iPNDM's fixed Adams-Bashforth weights, DEIS's
    integrated over each actual step), read from the plans; the base values, their paired side and DDIM's
    beside them, read from ``ds``."""
    from dode.companion.experiments import solver_spec

    a, b = LOF_PAIRS["ipndm"], LOF_PAIRS["deis3"]
    if not {a, b} <= set(ds.coords["solver"].values.tolist()):
        return ""
    cells, patterns, gaps, apart, near = [], set(), [], [], None
    for nfe in ds.coords["nfe"].values.tolist():
        va, vb = _values(ds, a, nfe, "base"), _values(ds, b, nfe, "base")
        if not (np.isfinite(va).any() and np.isfinite(vb).any()):
            continue
        plans = [
            make_plan(schedule, solver, nfe, grid, options) for solver, options in map(solver_spec, (a, b))
        ]
        steps = list(zip(plans[0].steps, plans[1].steps, strict=True))
        if any(len(x.weights) != len(y.weights) for x, y in steps):
            return ""  # not the same outputs per step: this note does not apply
        patterns.add(" ".join(str(len(x.weights)) for x, _ in steps))
        gaps.append(max(abs(u - v) for x, y in steps for u, v in zip(x.weights, y.weights, strict=True)))
        apart.append(abs(_mean(va) - _mean(vb)) / min(_mean(va), _mean(vb)))
        ddim = _values(ds, "ddim", nfe, "base")
        near = near or (nfe, max(abs(_mean(v) - _mean(ddim)) / _mean(ddim) for v in (va, vb)))
        which = {1: f"{_name(a)} lower", -1: f"{_name(b)} lower", 0: "inside the noise"}[_side(va, vb)]
        cells.append(f"{nfe} ({_cell(_mean(va))} and {_cell(_mean(vb))}, {which}; DDIM {_cell(_mean(ddim))})")
    if not cells:
        return ""
    return (
        f"* **{_name(a)} and {_name(b)}** score within {_pct(max(apart))} of each other, base "
        f"{_metric(ds).upper()} at NFE "
        + ", ".join(cells)
        + ". Their plans take the same number of outputs at every step ("
        + "; ".join(sorted(patterns, key=len))
        + "): DDIM's single output first, for want of earlier ones, and last, by the lower-order last step; "
        + f"between them their extrapolation weights differ by at most {max(gaps):.2f} (iPNDM's fixed "
        + "Adams-Bashforth weights, DEIS's integrated over each actual step). At NFE "
        + f"{near[0]}, the fewest steps, both are within {_pct(near[1])} of DDIM (one output at every step)."
    )


def explain_dpm_solver_pattern(ds, schedule, label: str = "dpm_solver3", grid=None) -> str:
    """Markdown for page 02: singlestep DPM-Solver-3's composition at each NFE of ``ds``, its last step
    (order, intervals spanned, weights, reach, share of the sigma fall) and the base and greedy D metric."""
    if label not in ds.coords["solver"].values.tolist():
        return f"This run has no {_name(label)}."
    var = _metric(ds).upper()
    nfes = [n for n in ds.coords["nfe"].values.tolist() if np.isfinite(_values(ds, label, n, "base")).any()]
    joint = "d-ode-joint" in ds.coords["method"].values
    lines = [
        "| NFE | orders | last step | its weights | step's logSNR rise / its outputs' span | σ fall in last step "
        f"| base {var} | D-solver |" + (" D-solver, joint fit |" if joint else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if joint else ""),
    ]
    second = []
    for p in plan_rows(schedule, [label], nfes, grid):
        base, d = _mean(_values(ds, label, p["nfe"], "base")), _mean(_values(ds, label, p["nfe"], "d-ode"))
        reach = "–" if not math.isfinite(p["reach"]) else f"{p['reach']:.1f}×"
        lines.append(
            f"| {p['nfe']} | {p['pattern']} | order {p['outputs']} over {count(p['intervals'], 'interval')} "
            f"| {_fmt_weights(p['weights'])} | {reach} | {_pct(p['sigma_share'])} | {base:.2f} | {d:.2f} |"
            + (f" {_cell(_mean(_values(ds, label, p['nfe'], 'd-ode-joint')))} |" if joint else "")
        )
        if p["outputs"] == 2:
            second.append((p, base, d))
    text = ["\n".join(lines), ""]
    if second:
        text.append(
            "Where the composition ends with a second-order step (NFE "
            + ", ".join(str(p["nfe"]) for p, _, _ in second)
            + "), that step estimates its correction from the output at its intermediate stage and "
            "extrapolates it over the whole step: "
            + "; ".join(
                f"at NFE {p['nfe']} it spans {count(p['intervals'], 'grid interval')}, covers {_pct(p['sigma_share'])} "
                "of the fall of σ and extrapolates "
                f"{p['reach']:.1f}× beyond the logSNR span of its two outputs, with weights "
                f"{_fmt_weights(p['weights'])} (base {var} {base:.2f}, D-solver {d:.2f})"
                for p, base, d in second
            )
            + ". Where it ends with a first-order step the last interval is a DDIM step."
        )
    worse = [n for n in nfes if _side(_values(ds, label, n, "d-ode"), _values(ds, label, n, "base")) < 0]
    text += [
        "",
        f"The greedy D-solver is worse than its base {_name(label)} {_at_nfes(worse)} of this run; the "
        f"composition ends with a second-order step {_at_nfes([p['nfe'] for p, _, _ in second])}.",
    ]
    return "\n".join(text)


def _spikes(by_nfe: dict[int, float]) -> list[int]:
    """The NFEs whose value is higher than at both neighbouring NFEs of the run (a spike of the curve)."""
    nfes = sorted(n for n, v in by_nfe.items() if math.isfinite(v))
    return [b for a, b, c in zip(nfes, nfes[1:], nfes[2:]) if by_nfe[b] > by_nfe[a] and by_nfe[b] > by_nfe[c]]


def _curve(da, solver: str, method: str) -> dict[int, float]:
    """A results file's curve: NFE -> mean over seeds of one (solver, method); {} where it was not run."""
    if solver not in da.coords["solver"].values or method not in da.coords["method"].values:
        return {}
    curve = da.sel({"solver": solver, "method": method}).mean("seed", skipna=True)
    return dict(zip(curve.coords["nfe"].values.tolist(), map(float, curve.values), strict=True))


def _explaining_section(da, solver: str, method: str, nfe: int) -> tuple[str, str]:
    """The section of page 02 that explains a rise of a Fig. 1 curve at ``nfe`` and the reason in a few words,
    or ``("", what is known)`` where no page explains it."""
    if solver == "dpm_solver3":  # page 02 lays out the order pattern at every NFE of the run
        return "anomaly-dpm-solver-pattern", "DPM-Solver-3's order pattern"
    if solver in LOF_PAIRS and method == "base":
        lof = _curve(da, LOF_PAIRS[solver], "base")
        if not math.isfinite(lof.get(nfe, math.nan)):
            return "", "no lower-order last step was run at that NFE to tell whether the last step causes it"
        if nfe not in _spikes(lof):
            return (
                "anomaly-last-step",
                "the full-order last step (with the lower-order last step it does not rise)",
            )
        return "", "the lower-order last step rises there too, so the last step alone does not explain it"
    return "", "no page explains it"


def summary_spikes(results: dict) -> str:
    """Below the book's Fig. 1: every curve of it (pages 02, 04 and 03; per model and solver, base and
    D-solver, mean over seeds) that is worse at an NFE than at both neighbouring NFEs, with the section of page
    02 that explains it, or what is known where none does. ``results``: results files by notebook stem. An
    empty string where no curve rises."""
    from dode.companion.labels import method_label
    from dode.companion.plots import SUMMARY_STEMS  # the files the figure is drawn from

    reasons: dict[tuple[str, str], list[str]] = {}
    for stem in SUMMARY_STEMS:
        ds = results.get(stem)
        if ds is None:
            continue
        var = _metric(ds)
        for model in ds.coords["model"].values.tolist() if "model" in ds.dims else [None]:
            da = ds[var].sel({"model": model}) if model is not None else ds[var]
            where = f" on `{model}`" if model is not None else ""
            for solver in da.coords["solver"].values.tolist():
                if solver in LOF_PAIRS.values():  # drawn on page 02, not in Fig. 1
                    continue
                for method in ("base", "d-ode"):
                    for nfe in _spikes(_curve(da, solver, method)):
                        reasons.setdefault(_explaining_section(da, solver, method, nfe), []).append(
                            f"{method_label(solver, method)}{where} at NFE {nfe}"
                        )
    if not reasons:
        return ""
    parts = [
        f"{', '.join(curves)}: {reason}" + (f" ({{ref}}`page 02 <{label}>`)" if label else "")
        for (label, reason), curves in reasons.items()
    ]
    return (
        "**Where a curve rises with NFE.** A sampler's error should fall as its NFE grows; where one of the "
        "curves above rises instead: " + "; ".join(parts) + "."
    )


# ----------------------------------------------------------------------------------------------------------
# Page 03: why base EDM Heun's curve can be flat between two NFEs. The rho = 7 grid (method chapter, base
# solvers) moves its points as the NFE grows, and one Heun step may cross the whole range of sigma where the
# samples form at one NFE and still at the next. Measured without the metric: every step of every plan taken
# alone from the state of one fine reference solution, then carried to sigma = 0 by that reference; the
# samples' distance from the reference on the same noise beside it.


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample: the root mean square over pixels of ``a - b``."""
    return (a - b).reshape(a.shape[0], -1).pow(2).mean(1).sqrt()


def heun_step_errors(den, noise: torch.Tensor, nfes, K: int) -> dict:
    """Base EDM Heun at each of ``nfes`` on ``noise``, against a reference solution of the same noise.

    The reference is Heun on the union of the plans' sigmas, each interval cut into ``K`` pieces
    (:func:`dode.grids.refine`), so it passes through every state a plan starts a step from. For each step
    ``s -> t`` of each plan, one Heun step (Euler into sigma = 0) from the reference state at ``s``, carried on
    to sigma = 0 by the same refined grid: its distance from the reference's final sample is the error that
    step alone leaves in the samples (zero for an exact step). Returns ``nfe``, ``distance`` and ``clipped``
    (mean over samples of the RMS over pixels from the reference's final sample; ``clipped``: both clipped to
    the pixel range [-1, 1], as the metrics see images), ``step_from``, ``step_to`` and ``step_error``
    (``nfe x step``, NaN-padded), and ``reference_check``: how far the reference moves with half its pieces
    (``K // 2``, at least 1)."""
    from dode.grids import refine
    from dode.sampling import run

    schedule = den.schedule
    nfes = sorted(int(n) for n in nfes)
    plans = {n: make_plan(schedule, "edm", n) for n in nfes}
    union = sorted({float(t) for p in plans.values() for t in p.times}, reverse=True)
    noise = noise.to(torch.float64)

    def solve(x, pts, pieces, record=None):  # Heun from state x at pts[0] through the refined pts
        grid = refine(schedule, "edm", torch.tensor(pts, dtype=torch.float64), pieces)
        return run(den, x / pts[0], make_plan(schedule, "edm", grid=grid), record_at=record)

    ref = solve(noise * union[0], union, K, record=set(union))
    states = {union[0]: noise * union[0], **ref.recorded, 0.0: ref.x}
    check = float(_rms(solve(noise * union[0], union, max(K // 2, 1)).x, ref.x).mean())

    width = max(len(p.steps) for p in plans.values())
    out = {
        "nfe": nfes,
        "distance": np.full(len(nfes), np.nan),
        "clipped": np.full(len(nfes), np.nan),
        **{k: np.full((len(nfes), width), np.nan) for k in ("step_from", "step_to", "step_error")},
        "reference_check": check,
    }
    for i, plan in enumerate(plans.values()):
        x = run(den, noise, plan).x
        out["distance"][i] = float(_rms(x, ref.x).mean())
        out["clipped"][i] = float(_rms(x.clamp(-1, 1), ref.x.clamp(-1, 1)).mean())
        for j, st in enumerate(plan.steps):
            s, t = st.s.t, st.t.t
            one = make_plan(schedule, "edm", grid=torch.tensor([s, t, 0.0] if t > 0 else [s, t]))
            if t > 0:  # a Heun plan's last step is Euler (into sigma = 0): keep the first, a full Heun step
                one = dataclasses.replace(one, nfe=2, steps=one.steps[:1], times=one.times[:2])
            y = run(den, states[s] / s, one).x
            below = [u for u in union if u <= t]
            final = solve(y, below, K).x if len(below) > 1 else y
            out["step_from"][i, j], out["step_to"][i, j] = s, t
            out["step_error"][i, j] = float(_rms(final, ref.x).mean())
    return out


#: the variables :func:`measure_heun_steps` adds to page 03's results file (the first one's ``key`` attribute
#: holds, per model, the settings they were measured with, as JSON)
HEUN_VARS = (
    "heun_distance",
    "heun_clipped",
    "heun_step_from",
    "heun_step_to",
    "heun_step_error",
    "heun_check",
)


def _heun_nfes(ds, model: str, max_nfe) -> list[int]:
    """The Heun NFEs whose base cell the file holds for ``model`` (up to ``max_nfe``)."""
    if "edm" not in ds.coords["solver"].values.tolist() or "base" not in ds.coords["method"].values.tolist():
        return []
    fd = ds[_metric(ds)].sel({"model": model, "solver": "edm", "method": "base"})
    return [
        int(n)
        for n in ds.coords["nfe"].values.tolist()
        if np.isfinite(np.asarray(fd.sel({"nfe": n}).values, float)).any()
        and (max_nfe is None or n <= max_nfe)
    ]


def measure_heun_steps(results, cfg: dict, settings: dict | None = None) -> Path:
    """Page 03: :func:`heun_step_errors` of every model of the results file ``results`` at its base Heun NFEs,
    on the first ``n`` evaluation noises of the sweep's first seed (those its first FD cell samples), with the
    settings of ``protocols.HEUN_STEPS`` for ``cfg``'s profile (or ``settings``). Stored beside the sweep in
    the same file (written atomically), over ``model x heun_nfe (x heun_step)``; a model whose stored settings
    and NFEs match is not computed again. Returns the file."""
    import xarray as xr

    from dode.companion import experiments as ex
    from dode.companion.protocols import HEUN_STEPS
    from dode.companion.results import write_netcdf

    settings = dict(settings or HEUN_STEPS[cfg["profile"]])
    path = Path(results)
    with xr.open_dataset(path, engine="h5netcdf") as f:
        ds = f.load().drop_encoding()
    models = ds.coords["model"].values.tolist()
    stored = json.loads(ds["heun_distance"].attrs.get("key", "{}")) if "heun_distance" in ds else {}
    seed = int(cfg["seeds"][0])
    keys, measured = {}, {}
    for model in models:
        nfes = _heun_nfes(ds, model, settings.get("max_nfe"))
        keys[model] = {"n": int(settings["n"]), "K": int(settings["K"]), "seed": seed, "nfes": nfes}
        if len(nfes) < 2 or stored.get(model) == keys[model]:
            continue
        den = ex.load_model(model, device=cfg["device"], model_options=cfg.get("model_options"))
        noise = ex.noise(seed, "eval", keys[model]["n"], ex.sample_shape(den), device=cfg["device"])
        den = ex.conditioned(den, seed, "eval", keys[model]["n"])
        measured[model] = heun_step_errors(den, noise, nfes, keys[model]["K"])
    if not measured:
        return path
    # every model's rows, measured now or kept from the file where their settings still hold
    kept = {m: k for m, k in keys.items() if m not in measured and stored.get(m) == k}
    old = ds[list(HEUN_VARS)] if "heun_distance" in ds else None
    nfe_axis = sorted({n for m in [*measured, *kept] for n in keys[m]["nfes"]})
    width = max(
        [r["step_error"].shape[1] for r in measured.values()] + ([old.sizes["heun_step"]] if kept else [])
    )
    grid = {"model": models, "heun_nfe": nfe_axis, "heun_step": list(range(width))}
    new = xr.Dataset(
        {
            "heun_distance": (("model", "heun_nfe"), np.full((len(models), len(nfe_axis)), np.nan)),
            "heun_clipped": (("model", "heun_nfe"), np.full((len(models), len(nfe_axis)), np.nan)),
            **{
                f"heun_{v}": (
                    ("model", "heun_nfe", "heun_step"),
                    np.full((len(models), len(nfe_axis), width), np.nan),
                )
                for v in ("step_from", "step_to", "step_error")
            },
            "heun_check": (("model",), np.full(len(models), np.nan)),
        },
        coords=grid,
    )
    for m in kept:
        for v in HEUN_VARS:
            row = old[v].sel({"model": m})
            new[v].loc[{"model": m}] = row.reindex({d: grid[d] for d in row.dims}).values
    for m, r in measured.items():
        at = {"model": m, "heun_nfe": r["nfe"]}
        new["heun_distance"].loc[at] = r["distance"]
        new["heun_clipped"].loc[at] = r["clipped"]
        for v in ("step_from", "step_to", "step_error"):
            new[f"heun_{v}"].loc[{**at, "heun_step": list(range(r[v].shape[1]))}] = r[v]
        new["heun_check"].loc[{"model": m}] = r["reference_check"]
    new["heun_distance"].attrs.update(
        key=json.dumps({m: keys[m] for m in [*measured, *kept]}, sort_keys=True),
        description="mean over fixed noises of the RMS over pixels from a reference solution of the same "
        "noise (anomalies.heun_step_errors); heun_clipped: both clipped to [-1, 1]",
    )
    new["heun_step_error"].attrs["description"] = (
        "the samples' distance from the reference left by one step alone, taken from the reference state"
    )
    new["heun_check"].attrs["description"] = "how far the reference's final samples move with half its pieces"
    ds = ds.drop_vars([v for v in (*HEUN_VARS, "heun_nfe", "heun_step") if v in ds]).merge(new)
    write_netcdf(ds, path)
    return path


def heun_rows(ds, model: str) -> list[dict]:
    """Per Heun NFE measured for ``model`` (:func:`measure_heun_steps`): the base metric per seed and its mean,
    the samples' distances from the reference, and the largest and next largest single-step errors."""
    if "heun_distance" not in ds or model not in ds["heun_distance"].coords["model"].values.tolist():
        return []
    h = ds[list(HEUN_VARS)].sel({"model": model})
    rows = []
    for n in h.coords["heun_nfe"].values.tolist():
        distance = float(h["heun_distance"].sel({"heun_nfe": n}))
        if not math.isfinite(distance):
            continue
        err = np.asarray(h["heun_step_error"].sel({"heun_nfe": n}).values, float)
        steps = [
            (float(a), float(b), float(e))
            for a, b, e in zip(
                h["heun_step_from"].sel({"heun_nfe": n}).values,
                h["heun_step_to"].sel({"heun_nfe": n}).values,
                err,
                strict=True,
            )
            if math.isfinite(e)
        ]
        order = sorted(range(len(steps)), key=lambda i: -steps[i][2])
        fd = _values(ds.sel({"model": model}), "edm", int(n), "base")
        rows.append(
            {
                "nfe": int(n),
                "fd": fd,
                "fd_mean": _mean(fd),
                "distance": distance,
                "clipped": float(h["heun_clipped"].sel({"heun_nfe": n})),
                "largest": steps[order[0]],
                "next": steps[order[1]][2] if len(order) > 1 else math.nan,
            }
        )
    return rows


def _sig(x: float) -> str:
    return f"{x:.3g}"


def _fall(a: float, b: float) -> float:
    return 1 - b / a


def heun_plateau_note(ds) -> str:
    """Markdown for page 03: for each model with :func:`measure_heun_steps`'s numbers, a table of base Heun's
    metric, the samples' distance from the reference and the largest single-step error per NFE, and, for
    every two neighbouring NFEs between which the base metric does not fall beyond the spread over seeds
    (:func:`dode.companion.spread.side`), whether the step that dominates the error shrinks there, and whether
    the distance falls least there (the flat stretch in the samples) or not (in the metric). Empty when the file
    holds no such numbers."""
    if "heun_distance" not in ds:
        return ""
    var = _metric(ds).upper()
    key = json.loads(ds["heun_distance"].attrs.get("key", "{}"))
    parts = []
    for model in ds["heun_distance"].coords["model"].values.tolist():
        rows = heun_rows(ds, model)
        if len(rows) < 2:
            continue
        k = key.get(model, {})
        check = float(ds["heun_check"].sel({"model": model}))  # the reference's own accuracy, one per model
        lines = [
            f"On `{model}`, measured on the first {k.get('n', '?')} noises of seed {k.get('seed', '?')}'s "
            f"evaluation set against a reference solution of the same noises: Heun with {k.get('K', '?')} "
            "sub-steps in every interval between the plans' σ (halving them moves its samples by "
            f"{check:.3f} RMS). Each step of each plan is taken alone from the reference's state and "
            "carried on to σ = 0 by the reference: its error is the distance it alone leaves in the samples.",
            "",
            f"| NFE | base {var} | distance to the reference | clipped to [-1, 1] | largest step (σ) "
            "| its error | next largest |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            a, b, e = r["largest"]
            lines.append(
                f"| {r['nfe']} | {_cell(r['fd_mean'])} | {r['distance']:.2f} | {r['clipped']:.2f} "
                f"| {_sig(a)} → {_sig(b)} | {e:.2f} | {_cell(r['next'])} |"
            )
        lines.append("")
        pairs = list(zip(rows, rows[1:]))
        falls = {(p["nfe"], q["nfe"]): _fall(p["distance"], q["distance"]) for p, q in pairs}
        flat = [(p, q) for p, q in pairs if side(paired_gain(p["fd"], q["fd"])) <= 0]
        if not flat:
            lines.append(
                f"The base {var} falls beyond the spread over seeds between every two neighbouring NFEs measured "
                f"({', '.join(str(r['nfe']) for r in rows)}): the curve has no flat stretch to explain here."
            )
        for p, q in flat:
            (a1, b1, e1), (a2, b2, e2) = p["largest"], q["largest"]
            said = (
                f"**From NFE {p['nfe']} to {q['nfe']} the base {var} does not fall beyond the spread over seeds** "
                f"({p['fd_mean']:.2f} → {q['fd_mean']:.2f}). At NFE {p['nfe']} the step σ {_sig(a1)} → {_sig(b1)} "
                f"alone leaves the samples {e1:.2f} from the reference; at NFE {q['nfe']} the grid takes "
                f"σ {_sig(a2)} → {_sig(b2)} in one step, which alone leaves {e2:.2f}"
            )
            if check >= abs(e2 - e1):
                said += (
                    f", a difference the reference cannot resolve (it moves by {check:.2f} itself with "
                    "half its sub-steps)."
                )
            elif e2 >= e1:
                said += (
                    f", no less: the evaluations NFE {q['nfe']} adds shrink its other steps, not the one that "
                    "dominates the error."
                )
            else:
                said += ", less: the largest step shrinks, and does not by itself explain the flat stretch."
            later = [r for r in rows if r["nfe"] > q["nfe"]]
            if later:
                a3, b3, e3 = later[0]["largest"]
                said += (
                    f" At NFE {later[0]['nfe']} the largest step is σ {_sig(a3)} → {_sig(b3)}, which leaves "
                    f"{e3:.2f}."
                )
            fall = falls[p["nfe"], q["nfe"]]
            others = {k: v for k, v in falls.items() if k != (p["nfe"], q["nfe"])}
            said += (
                f" Without the metric, the samples' distance from the reference falls by {_pct(fall)} from NFE "
                f"{p['nfe']} to {q['nfe']} ({p['distance']:.2f} → {q['distance']:.2f})"
            )
            if others:
                said += ", against " + ", ".join(f"{_pct(v)} from {a} to {b}" for (a, b), v in others.items())
                fd_fall = _fall(p["fd_mean"], q["fd_mean"])
                if fall < min(others.values()):
                    said += (
                        ": the smallest fall of the curve, so the flat stretch is in the samples themselves"
                    )
                    if fd_fall < fall:
                        said += f", and the {var}, which falls by {_pct(fd_fall)}, flattens it further"
                    said += "."
                else:
                    said += (
                        ": not the smallest fall of the curve, so the samples do improve here and the flat "
                        f"stretch is the {var}'s."
                    )
            else:
                said += "."
            lines.append(said)
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
