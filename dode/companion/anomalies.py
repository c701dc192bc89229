"""Why some base curves spike at small NFE: the last step of the plan, computed, beside the results.

A multistep solver's full-order last step (iPNDM, DEIS-3; book/method.md, first and last steps) combines
its last outputs with extrapolation weights over the last interval of the grid, which on the time-uniform
grid carries a large share of the fall of the noise level; singlestep DPM-Solver-3's composition ends
with a second-order step over the last two intervals where ``NFE mod 3 = 2``. Everything here is either
computed from the plan (:func:`dode.make_plan`: no sampling) or read from a results file; the pages show the
Markdown these functions return, so that no number or verdict of the explanation is typed by hand.
"""

from __future__ import annotations

import math

import numpy as np

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
    "spike_note",
    "peers_spike_notes",
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


def spike_note(
    fd_by_nfe: dict[int, float], label: str, schedule, grid=None, anchor: str = "anomaly-last-step"
) -> str:
    """One paragraph for a page that shows a full-order multistep base curve (``fd_by_nfe``: NFE -> metric):
    the NFEs where it is worse than at both neighbouring NFEs, with the last step of the plan there, and a
    link to page 02's section ``anchor``; an empty string when the curve has no such spike."""
    nfes = sorted(n for n, v in fd_by_nfe.items() if math.isfinite(v))
    spikes = _spikes(fd_by_nfe)
    if not spikes:
        return ""
    name = _name(label)
    parts = []
    for n in spikes:
        i = nfes.index(n)
        p = plan_rows(schedule, [label], [n], grid)[0]
        parts.append(
            f"at NFE {n} it scores {fd_by_nfe[n]:.2f}, against {fd_by_nfe[nfes[i - 1]]:.2f} at NFE {nfes[i - 1]} and "
            f"{fd_by_nfe[nfes[i + 1]]:.2f} at NFE {nfes[i + 1]}: its last step combines {p['outputs']} outputs with "
            f"weights {_fmt_weights(p['weights'])} over the last interval, which covers {_pct(p['sigma_share'])} of "
            f"the fall of σ"
        )
    said = "; ".join(parts)
    return (
        f"**Why base {name} spikes.** "
        + said[0].upper()
        + said[1:]
        + ". The full-order last step extrapolates its outputs "
        f"over that interval; page 02 shows what a lower-order last step (`lower_order_final`) changes, and where "
        f"a D-solver only repairs it ({{ref}}`the last step <{anchor}>`)."
    )


def peers_spike_notes(cells, metric: str, schedule) -> str:
    """:func:`spike_note` for every full-order iPNDM or DEIS-3 base sampler (``dode:<label>:<grid>:base``)
    of one model's cells of a peers results file (``peers.model_results``), paragraphs joined."""
    notes = []
    for name in cells.coords["sampler"].values.tolist():
        family, _, rest = name.partition(":")
        parts = rest.split(":")
        if family != "dode" or len(parts) != 3 or parts[0] not in LOF_PAIRS or parts[2] != "base":
            continue
        series = cells[metric].sel({"sampler": name})
        values = dict(zip(series.coords["nfe"].values.tolist(), map(float, series.values), strict=True))
        notes.append(spike_note(values, parts[0], schedule, grid=parts[1]))
    return "\n\n".join(n for n in notes if n)
