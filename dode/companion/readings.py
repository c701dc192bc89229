"""What each page reads from its results: the "What we see" / "Reading it" sentences, rendered from the
results file by code, so that a page never states a number or a verdict about this build by hand.

One function per page reading; each takes the page's results (an ``xarray.Dataset``, loaded) and returns
markdown. They hold for whatever the file holds: one model or several, one seed or three, missing cells.
The rule for a difference is the claims' (:mod:`dode.companion.claims`): a cell is *better* or *worse*
only if the paired difference (same seed, same evaluation noise) has the same sign in every seed and its
mean exceeds its spread over seeds; with one seed the sign is reported and marked as indicative.

:func:`intro_findings` and :func:`timings_summary` write the generated includes of the static pages
(``book/generated/``, see :mod:`dode.companion.build_book`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from dode.companion.claims import (
    check_all,
    check_findings,
    joint_verdicts,
    load_results,
    metric_name,
    paired_gains,
    paper_teacher,
)
from dode.companion.labels import SOLVER_NAMES, count, method_label
from dode.companion.spread import paired_gain, side

__all__ = [
    "sweep_reading",
    "heun_reading",
    "correlation_reading",
    "trajectories_reading",
    "samples_reading",
    "formulations_reading",
    "ablation_reading",
    "lookahead_reading",
    "timing_reading",
    "testbed_reading",
    "peers_reading",
    "protocol_reading",
    "intro_findings",
    "timings_summary",
    "NOT_RUN",
]

NOT_RUN = "not run yet"
_SIDES = {1: "better", -1: "worse", 0: "inside the noise"}


def _join(items) -> str:
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _nfes(rows) -> str:
    return "NFE " + _join(r["nfe"] for r in rows)


def _seed_note(rows) -> str:
    seeds = min(r["seeds"] for r in rows)
    if seeds < 2:
        return "One seed: the signs below are indicative, not significant."
    return (
        f"{seeds} seeds; *better* and *worse* mean: in every seed (same evaluation noise) and by more than "
        "the spread over seeds."
    )


def _value(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def _in_band(value: float, floor) -> bool:
    """Whether ``value`` lies within the noise floor's band ``(mean, std, seeds)`` (None: no floor)."""
    return floor is not None and value <= floor[0] + floor[1]


def _at_floor(r, floor, key: str | None = None) -> bool:
    """Whether both sides of a paired cell (or only its side ``key``) lie within the noise floor's band."""
    return _in_band(r[key] if key else max(r["base"], r["method"]), floor)


def _floor_words(r, floor) -> str:
    """Where a worse cell stands against the noise floor's band: both sides in it, only the base, or ''."""
    if _at_floor(r, floor):
        return ", both within the noise floor's band"
    if _at_floor(r, floor, "base"):
        return ", the base within the noise floor's band"
    return ""


def _gain_sentence(rows, var: str, what: str, against: str, floor=None) -> str:
    """One sentence: at which NFEs ``what`` is better / worse / inside the noise against ``against``. A worse
    cell whose two sides both lie within the noise floor's band (``floor``: :func:`dode.companion.plots.
    floor_stats`) is said to be there: at the floor the metric no longer ranks samplers."""
    by_side = {s: [r for r in rows if side(r) == s] for s in (1, 0, -1)}
    parts = []
    for mark in (1, 0, -1):
        cells = by_side[mark]
        if not cells:
            continue
        text = f"{_SIDES[mark]} at {_nfes(cells)}"
        if mark == -1:
            text += (
                " ("
                + "; ".join(
                    f"NFE {r['nfe']}: {_value(r['base'])} → {_value(r['method'])}" + _floor_words(r, floor)
                    for r in cells
                )
                + ")"
            )
        parts.append(text)
    sentence = f"**{what}** against {against}: {_join(parts)}."
    if any(_floor_words(r, floor) for r in by_side[-1]):
        sentence += (
            f" The band ({_value(floor[0])} ± {_value(floor[1])}) is what a converged sampler scores at this "
            "sample size: at the floor the metric no longer ranks samplers"
        )
        if any(_floor_words(r, floor) and not _at_floor(r, floor) for r in by_side[-1]):
            sentence += (
                ", and a base solver inside it leaves its D-solver no error to remove, only the error of "
                "λs fitted on one batch of noise against its teacher to add"
            )
        sentence += "."
    better = by_side[1]
    if len(better) == 1:
        r = better[0]
        sentence += f" {var.upper()} {_value(r['base'])} → {_value(r['method'])} at NFE {r['nfe']}."
    elif better:
        top = max(better, key=lambda r: r["gain"])
        sentence += (
            f" Its largest gain is at NFE {top['nfe']} ({var.upper()} {_value(top['base'])} → "
            f"{_value(top['method'])})."
        )
    return sentence


def _models(rows) -> list:
    return list(dict.fromkeys(r.get("model") for r in rows))


def sweep_reading(ds, method: str = "d-ode", base: str = "base", solvers=None) -> str:
    """Pages 02-04: per model and solver, the NFEs at which the D-solver is better than, worse than or
    inside the noise of its base solver (:func:`dode.companion.claims.paired_gains`)."""
    var = metric_name(ds)
    rows = [r for r in paired_gains(ds, method, base) if solvers is None or r["solver"] in solvers]
    if not rows:
        return f"No cell of this results file holds both {base} and {method} ({NOT_RUN})."
    from dode.companion.plots import floor_stats

    lines = [_seed_note(rows)]
    for model in _models(rows):
        floor = floor_stats(ds, var, model)
        for solver in dict.fromkeys(r["solver"] for r in rows):
            cells = [r for r in rows if r.get("model") == model and r["solver"] == solver]
            if not cells:
                continue
            against = method_label(solver, base) + (f" on `{model}`" if model else "")
            lines.append("- " + _gain_sentence(cells, var, method_label(solver, method), against, floor))
    return "\n".join(lines)


def heun_reading(ds) -> str:
    """Page 03: EDM's Heun sampler with one lambda per landing time (``d-ode``, the default) and with the
    paper's lambda on every stage (``d-ode-per-stage``), each against Heun, and against each other."""
    if "edm" not in ds.coords["solver"].values.tolist():
        return f"EDM's Heun sampler is not in this results file ({NOT_RUN})."
    var = metric_name(ds)
    out = []
    for method, name in (
        ("d-ode", "D-EDM, one λ per landing time"),
        ("d-ode-per-stage", "D-EDM, λ per stage"),
    ):
        rows = [r for r in paired_gains(ds, method) if r["solver"] == "edm"]
        if rows:
            out.append("- " + _gain_sentence(rows, var, name, "Heun"))
    rows = [r for r in paired_gains(ds, "d-ode", "d-ode-per-stage") if r["solver"] == "edm"]
    if rows:
        out.append("- " + _gain_sentence(rows, var, "One λ per landing time", "λ per stage"))
    if not out:
        return f"No Heun cell holds a D-solver yet ({NOT_RUN})."
    return _seed_note(paired_gains(ds, "d-ode")) + "\n" + "\n".join(out)


def correlation_reading(ds) -> str:
    """Page 01: per model, how alike neighbouring denoising outputs are, and the whole run's outputs."""
    lines = []
    for model in ds.coords["model"].values.tolist():
        S = np.asarray(ds["similarity"].sel({"model": model}).values, dtype=float)
        ok = np.isfinite(S).any(axis=1)
        if not ok.any():
            continue
        S = S[np.ix_(ok, ok)]
        neighbours = np.diag(S, 1)
        lines.append(
            f"- `{model}`: neighbouring outputs have cosine similarity between {neighbours.min():.4f} and "
            f"{neighbours.max():.4f} (mean {neighbours.mean():.4f}); the first and the last output have "
            f"{S[0, -1]:.2f}; {100 * np.mean(S > 0.9):.0f} % of all pairs lie above 0.9, the smallest entry is "
            f"{np.nanmin(S):.2f}."
        )
    if not lines:
        return f"The results file holds no similarity matrix ({NOT_RUN})."
    return "\n".join(lines)


def _final_distances(ds, solver, nfe, method):
    """Each sample's distance to the reference at the run's last state, or None where the run is absent."""
    t = ds["state_time"].sel({"solver": solver, "nfe": nfe, "method": method}).values
    if not np.isfinite(t).any():
        return None
    last = int(np.flatnonzero(np.isfinite(t))[-1])
    return np.asarray(
        ds["distance"].sel({"solver": solver, "nfe": nfe, "method": method}).isel(state=last).values, float
    )


def _final_distance(ds, solver, nfe, method):
    """Mean and std over samples of the distance to the reference at the run's last state, or None."""
    d = _final_distances(ds, solver, nfe, method)
    if d is None:
        return None
    return float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else float("nan")


def _drift_sentence(ds, solver, nfe) -> str | None:
    """The paper's Fig. 7: D-DDIM-Sep and -All drift away from the target at the end. Where each of them ends
    against D-DDIM, paired over the same samples; None where the file holds neither or no D-DDIM."""
    ref = _final_distances(ds, solver, nfe, "d-ode")
    parts, drifts = [], []
    for m in ("sep", "all"):
        d = _final_distances(ds, solver, nfe, m) if m in ds.coords["method"].values else None
        if d is None or ref is None:
            continue
        diff = d - ref
        drifts.append(diff.mean() > 0)
        parts.append(
            f"{method_label(solver, m)}-{nfe} ends {'farther from' if drifts[-1] else 'closer to'} the reference "
            f"than {method_label(solver, 'd-ode')}-{nfe} ({d.mean():.2f} against {ref.mean():.2f}; farther in "
            f"{int((diff > 0).sum())} of {diff.size} samples)"
        )
    if not parts:
        return None
    verdict = (
        "the drift at the end that the paper's Fig. 7 shows appears here too"
        if all(drifts)
        else "the drift at the end that the paper's Fig. 7 shows does not appear here"
        if not any(drifts)
        else "the paper's Fig. 7 drift appears for one of them only"
    )
    return "- " + "; ".join(parts) + f": {verdict}."


def trajectories_reading(ds) -> str:
    """Page 05: where each run ends against the long reference run (distance of the final samples), and
    which method stays closer along the run."""
    lines = []
    methods = ds.coords["method"].values.tolist()
    for solver in ds.coords["solver"].values.tolist():
        for nfe in ds.coords["nfe"].values.tolist():
            finals = {m: _final_distance(ds, solver, nfe, m) for m in methods}
            finals = {m: v for m, v in finals.items() if v is not None}
            if "base" not in finals:
                continue
            ranked = sorted(finals, key=lambda m: finals[m][0])
            text = ", ".join(
                f"{method_label(solver, m)}-{nfe} {finals[m][0]:.2f} ± {finals[m][1]:.2f}" for m in ranked
            )
            lines.append(
                f"- Final distance to the reference (L2, mean ± std over samples), closest first: {text}."
            )
            if "d-ode" in finals:
                closer = finals["d-ode"][0] < finals["base"][0]
                d = np.asarray(
                    ds["distance"].sel({"solver": solver, "nfe": nfe}).mean("sample").values, float
                )
                i_base, i_d = methods.index("base"), methods.index("d-ode")
                both = np.isfinite(d[i_base]) & np.isfinite(d[i_d])
                everywhere = bool(np.all(d[i_d][both] <= d[i_base][both]))
                lines.append(
                    f"- {method_label(solver, 'd-ode')}-{nfe} ends {'closer to' if closer else 'farther from'} "
                    f"the reference than {method_label(solver, 'base')}-{nfe}"
                    + (
                        ", and is no farther at any state of the run."
                        if everywhere
                        else "; along the run it is not closer at every state."
                    )
                )
            drift = _drift_sentence(ds, solver, nfe)
            if drift:
                lines.append(drift)
    if not lines:
        return f"The results file holds no base run ({NOT_RUN})."
    return "\n".join(lines)


def samples_reading(ds) -> str:
    """Page 06: per panel and NFE, whether the D-solver's images are closer to the long DDIM run from the
    same noise than the base solver's (the table's distances)."""
    from dode.companion.plots import trim_padding

    if "reference" not in ds:
        return "The results file holds no reference run: no distances to read."
    lines = []
    for panel in ds.coords["panel"].values.tolist():
        model, solver = panel.rsplit("/", 1)
        ref = trim_padding(ds["reference"].sel({"model": model}).values)
        cells = []
        for nfe in ds.coords["nfe"].values.tolist():
            d = {}
            for method in ("base", "d-ode"):
                if method not in ds.coords["method"].values:
                    continue
                x = ds["samples"].sel({"panel": panel, "method": method, "nfe": nfe}).values
                if np.isfinite(x).any():
                    d[method] = float(
                        np.linalg.norm((trim_padding(x) - ref).reshape(len(ref), -1), axis=1).mean()
                    )
            if len(d) == 2:
                word = "closer" if d["d-ode"] < d["base"] else "farther"
                cells.append(f"NFE {nfe}: {word} ({d['base']:.2f} → {d['d-ode']:.2f})")
        if cells:
            name = SOLVER_NAMES.get(solver, solver)
            lines.append(f"- {name} on `{model}`, D-solver against base: {'; '.join(cells)}.")
    if not lines:
        return f"No panel holds both solvers yet ({NOT_RUN})."
    return "Mean distance of the images to the reference from the same noise:\n" + "\n".join(lines)


def formulations_reading(ds) -> str:
    """Page 07: each formulation against DDIM, and D-DDIM against each of the others (paired)."""
    var = metric_name(ds)
    variants = [m for m in ("sep", "all", "d-ode-2", "d-ode") if m in ds.coords["method"].values]
    rows = [r for m in variants for r in paired_gains(ds, m) if r["solver"] == "ddim"]
    if not rows:
        return f"No formulation has results yet ({NOT_RUN})."
    lines = [_seed_note(rows)]
    for m in variants:
        cells = [r for r in paired_gains(ds, m) if r["solver"] == "ddim"]
        if cells:
            lines.append("- " + _gain_sentence(cells, var, method_label("ddim", m), "DDIM"))
    for m in variants:
        if m == "d-ode":
            continue
        cells = [r for r in paired_gains(ds, "d-ode", m) if r["solver"] == "ddim"]
        if cells:
            lines.append("- " + _gain_sentence(cells, var, "D-DDIM", method_label("ddim", m)))
    return "\n".join(lines)


def _sweeps_fitting_batch(profile: str | None) -> int | None:
    """The fitting batch B of the quality sweeps (page 02's protocol) under ``profile``, None if unknown."""
    from dode.companion.protocols import PROTOCOLS

    return PROTOCOLS["02_noise_prediction"].get(profile or "", {}).get("B")


def ablation_reading(ds) -> str:
    """Page 08: D-DDIM's metric against K (at the default B) and against B (at the default K), paired with
    the default point, and the spread over seeds at each B."""
    var = metric_name(ds)
    stored = json.loads(ds.attrs["parameters"])
    K0, B0 = stored["K"], stored["B"]
    da = ds[var].sel({"solver": "ddim", "method": "d-ode"})
    lines = []
    for dim, other, at, default in (("K", "B", B0, K0), ("B", "K", K0, B0)):
        for nfe in ds.coords["nfe"].values.tolist():
            cut = da.sel({other: at, "nfe": nfe})
            ref = np.asarray(cut.sel({dim: default}).values, float)
            parts = []
            for v in ds.coords[dim].values.tolist():
                if v == default:
                    continue
                x = np.asarray(cut.sel({dim: v}).values, float)
                ok = np.isfinite(x) & np.isfinite(ref)
                if not ok.any():
                    continue
                gain = ref[ok] - x[ok]
                row = {
                    "gain": gain.mean(),
                    "std": gain.std(ddof=1) if gain.size > 1 else np.nan,
                    "seeds": int(gain.size),
                    "wins": int((gain > 0).sum()),
                }
                parts.append(
                    f"{dim} = {v}: {_SIDES[side(row)]} ({_value(ref[ok].mean())} → {_value(x[ok].mean())})"
                )
            if parts:
                lines.append(f"- NFE {nfe}, {other} = {at}, against {dim} = {default}: {'; '.join(parts)}.")
        if dim == "B":
            for nfe in ds.coords["nfe"].values.tolist():
                spread = da.sel({"K": K0, "nfe": nfe}).std("seed", ddof=1)
                values = [
                    f"{b}: {float(spread.sel({'B': b})):.3f}"
                    for b in ds.coords["B"].values.tolist()
                    if np.isfinite(float(spread.sel({"B": b})))
                ]
                if values:
                    lines.append(f"- Spread over seeds of D-DDIM at NFE {nfe}, by B: {', '.join(values)}.")
    if not lines:
        return f"No ablation point has results yet ({NOT_RUN})."
    sweep_B = _sweeps_fitting_batch(ds.attrs.get("profile"))
    if sweep_B is not None and sweep_B != B0 and sweep_B in ds.coords["B"].values.tolist():
        lines.append(
            f"- The other sweeps of the `{ds.attrs['profile']}` profile fit on B = {sweep_B}, not {B0} (a fit's "
            f"cost grows like K × B): the lines for B = {sweep_B} above say what that choice costs in quality."
        )
    from dode.companion.plots import floor_stats

    floor = floor_stats(ds, var)
    means = da.mean("seed", skipna=True).values
    if np.isfinite(means).any() and _in_band(np.nanmax(means), floor):
        lines.append(
            f"- Every point lies within the noise floor's band ({_value(floor[0])} ± {_value(floor[1])}), what a "
            "converged sampler scores at this sample size: the differences above are paired over seeds, but they "
            "are differences between samplers the metric cannot tell from a converged one, so they show the "
            "direction of the paper's claims, not their size."
        )
    seeds = ds.sizes.get("seed", 1)
    note = "One seed: the signs below are indicative, not significant. " if seeds < 2 else ""
    return note + "Paired with the default point of the same seed:\n" + "\n".join(lines)


def lookahead_reading(ds) -> str:
    """Page 09: D-DDIM against Fixed-D-DDIM and LA-DDIM, each at the best constant of its grid."""
    from dode.companion.plots import best_constant, floor_stats, present, tuning_split

    var = metric_name(ds)
    reduced, best = best_constant(ds, var)
    floor = floor_stats(
        tuning_split(ds)[0], var
    )  # the evaluation seeds' floor, as the page's figure draws it
    lines = []
    for m in present(ds, ("fixed", "lookahead")):
        for nfe in ds.coords["nfe"].values.tolist():
            value = float(best.sel({"solver": "ddim", "method": m, "nfe": nfe}))
            if not np.isfinite(value):
                continue
            grid = ds.coords["lambda_value"].values
            edge = " (an edge of the grid)" if value in (grid.min(), grid.max()) else ""
            lines.append(f"- {method_label('ddim', m)} at NFE {nfe}: best constant λ = {value:g}{edge}.")
        rows = [r for r in paired_gains(reduced, "d-ode", m) if r["solver"] == "ddim"]
        if rows:
            lines.append(
                "- "
                + _gain_sentence(
                    rows, var, "D-DDIM", method_label("ddim", m) + " at its best constant", floor
                )
            )
    if not lines:
        return f"The grid search has no results yet ({NOT_RUN})."
    return _seed_note(paired_gains(reduced, "d-ode")) + "\n" + "\n".join(lines)


def timing_reading(ds) -> str:
    """Page 10: what progressive distillation was given and cost, what the closed-form fits cost, and each
    D-solver against its base solver."""
    var = metric_name(ds)
    lines = []
    if "train_seconds" in ds:
        # one value per halving (the student's NFE); other dimensions, if any, are reduced away
        per_halving = ds["train_seconds"].max([d for d in ds["train_seconds"].dims if d != "nfe"])
        iterations = ds["train_iterations"].sum() if "train_iterations" in ds else None
        if per_halving.notnull().any():
            lines.append(
                f"- Progressive distillation: {count(int(per_halving.notnull().sum()), 'halving')}"
                + (f", {int(iterations)} training iterations" if iterations is not None else "")
                + f" and {float(per_halving.sum()):.0f} s of training in all on this machine."
            )
    if "fit_seconds" in ds:
        fits = np.asarray(ds["fit_seconds"].values, float)
        if np.isfinite(fits).any():
            lines.append(
                f"- The closed-form λ fits took {np.nanmin(fits):.2f} to {np.nanmax(fits):.2f} s each (teacher run "
                "included)."
            )
    rows = paired_gains(ds.sel({"method": ["base", "d-ode"]}) if "pd" in ds.coords["method"].values else ds)
    for solver in dict.fromkeys(r["solver"] for r in rows):
        cells = [r for r in rows if r["solver"] == solver]
        lines.append(
            "- " + _gain_sentence(cells, var, method_label(solver, "d-ode"), method_label(solver, "base"))
        )
    if "pd" in ds.coords["method"].values.tolist():
        cells = [r for r in paired_gains(ds, "d-ode", "pd") if r["solver"] == "ddim"]
        if cells:
            lines.append("- " + _gain_sentence(cells, var, "D-DDIM", "PD's student at the same NFE"))
    if not lines:
        return f"The timing run has no results yet ({NOT_RUN})."
    note = [_seed_note(rows)] if rows else []
    return "\n".join(note + lines)


def testbed_reading(ds) -> str:
    """Page 12: on fresh noise, where the greedy fit (taught as the paper teaches) makes a solver worse than
    its base, whether the joint fit repairs it, and how often the joint fit is no farther than the greedy."""
    lines = []
    for sched in ds.coords["schedule"].values.tolist():
        worse, repaired, never_worse, cells = [], [], 0, 0
        for label in ds.coords["solver"].values.tolist():
            teacher = paper_teacher(label)
            for nfe in ds.coords["nfe"].values.tolist():
                d = ds["distance_fresh"].sel({"schedule": sched, "solver": label, "nfe": nfe})
                base = float(d.sel({"method": "base", "teacher": "ddim"}))
                greedy = float(d.sel({"method": "d-ode", "teacher": teacher}))
                joint = float(d.sel({"method": "d-ode-joint", "teacher": teacher}))
                if not np.isfinite([base, greedy, joint]).all():
                    continue
                cells += 1
                never_worse += joint <= greedy
                if greedy > base:
                    name = f"{SOLVER_NAMES.get(label, label)} at NFE {nfe}"
                    worse.append(f"{name} ({base:.3f} → {greedy:.3f}, joint {joint:.3f})")
                    repaired.append(joint < base)
        if not cells:
            continue
        lines.append(
            f"- Schedule `{sched}`: the joint D-solver is no farther from the exact solution than the greedy one in "
            f"{never_worse} of {cells} cells."
        )
        if worse:
            lines.append(
                f"- The greedy fit makes the base solver worse in {count(len(worse), 'cell')}: {'; '.join(worse)}; the "
                f"joint fit beats the base solver in {sum(repaired)} of them."
            )
        else:
            lines.append("- The greedy fit makes no base solver worse here.")
    if not lines:
        return f"The test bed has no results yet ({NOT_RUN})."
    return "Distances to the exact solution on fresh noise (base → greedy):\n" + "\n".join(lines)


def peers_reading(ds) -> str:
    """Page 13: per model, the cells (NFEs) where the best dode sampler is better than the best tuned
    diffusers scheduler beyond the seed spread, inside it, or worse (:func:`dode.companion.peers.cell_verdicts`,
    the reproduction page's spread rule), and whether the page's goal holds: a dode sampler at or below the
    tuned peer at every NFE, better beyond the spread at NFE <= 6."""
    from dode.companion.peers import cell_verdicts

    rows = cell_verdicts(ds)
    if not rows:
        return f"No NFE holds a tuned peer and a dode sampler yet ({NOT_RUN})."
    seeds = min(r["seeds"] for r in rows)
    lines = [
        f"{seeds} seeds: a difference counts where it holds in every seed and exceeds the spread of the "
        "paired differences over seeds."
        if seeds > 1
        else "One seed: there is no spread, the sign alone decides; margins are indicative, not significant."
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        name = f"`{model}`" if model else "This model"
        # the NFEs of each side only: the samplers and their values are in the verdict table above
        parts = [
            f"{words} at NFE {_join(r['nfe'] for r in cells)}"
            for sign, words in ((1, "better than it"), (0, "inside its noise"), (-1, "worse than it"))
            if (cells := [r for r in mine if r["side"] == sign])
        ]
        met = [r["nfe"] for r in mine if r["goal"]]
        missed = [r["nfe"] for r in mine if not r["goal"]]
        goal = (
            "at every NFE"
            if not missed
            else f"at NFE {_join(met)}, not at NFE {_join(missed)}"
            if met
            else "at no NFE"
        )
        lines.append(
            f"- {name}: against the best diffusers scheduler (tuned or its own configuration, whichever scores "
            "lower on the evaluation noise), the best dode sampler (base or D) is "
            + "; ".join(parts)
            + f" (the verdict table above gives both sides). The page's goal (at or below the tuned scheduler, "
            f"better beyond the spread at NFE <= 6) holds {goal}."
        )
    return "\n".join(lines)


#: what page 13 calls the selected sampler of each group (dode.companion.peers.GROUPS)
_GROUP_WORDS = {
    "diffusers": "the tuned diffusers scheduler",
    "base": "the best dode base",
    "D": "the best D-solver",
}


def _on_tuning(every, tuning: str, name: str | None, n1, n2) -> tuple[float, float]:
    """Sampler ``name``'s metric on page 13's tuning noise (variable ``tuning`` of one model's results
    ``every``) at ``n1`` and ``n2``; NaN where it did not run."""
    if name is None or tuning not in every or name not in every.coords["sampler"].values.tolist():
        return float("nan"), float("nan")
    a, b = (float(every[tuning].sel({"sampler": name, "nfe": n})) for n in (n1, n2))
    return a, b


def _why_it_rises(every, tuning: str, name: str, n1, n2) -> str:
    """What page 13's tuning noise says about sampler ``name`` from NFE ``n1`` to ``n2``: its own curve there
    and, for a full-order last step, the same sampler's with the lower-order last step."""
    from dode.companion.peers import lof_sibling, sampler_label

    own, lowered = (
        _on_tuning(every, tuning, name, n1, n2),
        _on_tuning(every, tuning, lof_sibling(name), n1, n2),
    )
    if not np.isfinite(own).all():
        return "The results file holds no measurement that explains it."
    curve = f"{_value(own[0])} → {_value(own[1])}"
    if own[1] <= own[0]:
        return f"On the tuning noise {sampler_label(name)} falls ({curve})."
    if np.isfinite(lowered).all() and lowered[1] < lowered[0]:
        return (
            f"{sampler_label(name)} takes its last step at full order: on the tuning noise it rises too "
            f"({curve}), while the same sampler with the lower-order last step falls "
            f"({_value(lowered[0])} → {_value(lowered[1])}). The full-order last step extrapolates over the "
            f"last interval: it pays at NFE {n1} and costs at NFE {n2}, the effect page 02 measures for "
            "iPNDM and DEIS-3 against their lower-order-final forms."
        )
    return (
        f"On the tuning noise {sampler_label(name)} rises too ({curve}): the rise is the sampler's own at "
        "these NFEs, not the selection's; the results file does not say why."
    )


def rising_reading(ds) -> str:
    """Page 13: where a group's selected sampler scores worse at an NFE than the group's pick at the next
    smaller one (a curve that should fall rises), paired over the evaluation seeds and judged by the spread
    rule, with what the results file says about why: the samplers' own curves on the tuning noise and, where
    the sampler takes a full-order last step, the same sampler with the lower-order last step
    (:func:`dode.companion.peers.lof_sibling`) on the same tuning noise."""
    from dode.companion.peers import (
        GROUPS,
        best_names,
        model_results,
        sampler_label,
        seed_values,
    )
    from dode.companion.plots import floor_stats

    var = metric_name(ds)
    tuning = f"{var}_tuning"
    models = ds.coords["model"].values.tolist() if "model" in ds.dims else [None]
    lines = []
    for model in models:
        every = ds.sel({"model": model}) if model is not None else ds
        cells = model_results(ds, model) if model is not None else ds
        nfes = cells.coords["nfe"].values.tolist()

        for group in GROUPS:
            picks = [(n, best[group][0]) for n in nfes if group in (best := best_names(cells, var, n))]
            for (n1, s1), (n2, s2) in zip(picks, picks[1:], strict=False):
                row = paired_gain(seed_values(cells, var, s1, n1), seed_values(cells, var, s2, n2))
                if not row["method"] > row["base"]:
                    continue
                where = f"`{model}`, " if model is not None else ""
                beyond = "beyond the seed spread" if side(row) < 0 else "inside the seed spread"
                text = (
                    f"- {where}{_GROUP_WORDS[group]} scores worse at NFE {n2} than at NFE {n1} "
                    f"({_value(row['base'])} → {_value(row['method'])}, {beyond}). "
                )
                floor = floor_stats(ds, var, model)
                if _at_floor(row, floor):
                    text += (
                        f"Both lie within the noise floor's band ({_value(floor[0])} ± {_value(floor[1])}), where a "
                        "converged sampler scores: at the floor the metric no longer ranks samplers. "
                    )
                if s1 == s2:
                    text += f"Both are {sampler_label(s1)}. " + _why_it_rises(every, tuning, s1, n1, n2)
                else:
                    picked = _on_tuning(every, tuning, s2, n2, n2)[0]
                    text += (
                        f"The pick changed from {sampler_label(s1)} to {sampler_label(s2)}"
                        + (f" (tuning noise at NFE {n2}: {_value(picked)})" if np.isfinite(picked) else "")
                        + ". "
                        + _why_it_rises(every, tuning, s1, n1, n2)
                    )
                lines.append(text)
    if not lines:
        return "No group's selected sampler scores worse at an NFE than the group's pick at the next smaller one."
    return (
        "A sampler's metric should fall as its NFE grows. Where a group's pick rises instead, paired over the "
        "evaluation seeds:\n" + "\n".join(lines)
    )


def protocol_reading(ds, samples: str = "evaluation samples per cell") -> str:
    """The protocol numbers this page ran with, from the parameters stored in its results file; ``samples``
    names what ``n_samples`` counts on this page (evaluation samples, trajectories, images)."""
    p = json.loads(ds.attrs.get("parameters", "{}"))
    items = [f"profile `{ds.attrs.get('profile', p.get('profile', '?'))}`"]
    models = p.get("models") or p.get("model")
    if models:
        names = np.atleast_1d(models).tolist()
        items.append(("models " if len(names) > 1 else "model ") + _join(f"`{m}`" for m in names))
    nfes = p.get("nfes")
    if isinstance(nfes, dict):
        items.append("NFEs " + "; ".join(f"{SOLVER_NAMES.get(k, k)} {_join(v)}" for k, v in nfes.items()))
    elif nfes:
        items.append("NFE " + _join(nfes))
    joint = p.get("joint_nfes")
    if isinstance(joint, dict):  # per solver: those with joint fits only
        joint = {k: v for k, v in joint.items() if v}
        if joint:
            items.append(
                "joint fit at NFE "
                + "; ".join(f"{SOLVER_NAMES.get(k, k)} {_join(v)}" for k, v in joint.items())
            )
    elif joint:
        items.append("joint fit at NFE " + _join(joint))
    if p.get("steps"):
        items.append(f"{p['steps']} DDIM steps")
    if p.get("reference_steps"):
        items.append(f"reference DDIM with {p['reference_steps']} steps")
    if p.get("seeds") is not None:
        seeds = np.atleast_1d(p["seeds"]).tolist()
        items.append(f"{len(seeds)} seeds" if len(seeds) > 1 else "one seed")
        if p.get("tuning_seed") is not None and p.get("lambda_values"):
            items.append(f"the constant λ chosen on seed {p['tuning_seed']}")
    elif p.get("seed") is not None:
        items.append("one seed")
    if p.get("n_samples") is not None:
        items.append(f"{p['n_samples']:,} {samples}")
    if p.get("n_fresh") is not None:
        items.append(f"{p['n_fresh']:,} fresh noises")
    if p.get("lambda_values"):
        items.append("constant λ grid " + _join(f"{v:g}" for v in p["lambda_values"]))
    # plain text: MathJax does not typeset the Markdown that a code cell outputs
    items += [f"*{key}* = {p[key]}" for key in ("K", "B") if p.get(key) is not None]
    return "This page ran with " + ", ".join(items) + "."


# --------------------------------------------------------------------------------- the static pages


def intro_findings(results_dir: str | Path) -> str:
    """book/intro.md's findings: the verdict on every claim and finding, from the results files."""
    from dode.companion.claims import EVIDENCE

    stems = sorted({s for stems in EVIDENCE.values() for s in stems})
    results = load_results(results_dir, stems)
    if not results:
        return f"The experiments have {NOT_RUN}: run `python -m dode.companion.run_notebooks`."
    lines = []
    for v in [*check_all(results), *check_findings(results)]:
        if v.verdict == "not run":
            lines.append(f"- {v.statement}: *{NOT_RUN}*.")
        else:
            first = (v.evidence.splitlines() or [""])[0].strip()
            lines.append(f"- {v.statement}: **{v.verdict}** ({first}).")
    ds = results.get("03_data_prediction")
    if ds is not None and "edm" in ds.coords["solver"].values.tolist():
        lines.append(
            "\nEDM's Heun sampler, the one deviation of the method (page 03):\n\n" + heun_reading(ds)
        )
    ds = results.get("02_noise_prediction")
    if ds is not None:
        rows = joint_verdicts(ds)
        changed = [r for r in rows if r["changed"]]
        if rows:
            lines.append(
                f"\nThe joint fit (page 02) changes the verdict against the base solver in {len(changed)} of "
                f"{len(rows)} cells with both fits."
            )
    return "\n".join(lines)


def versions_table(results_dir: str | Path) -> str:
    """book/timings.md's table of the environment each results file was computed in: Python, the packages
    that change numbers (:data:`dode.companion.results.NUMBER_PACKAGES`) and the device, from the files'
    attributes; a file resumed under other versions lists its earlier ones too."""
    import xarray as xr

    from dode.companion.results import NUMBER_PACKAGES

    paths = sorted(Path(results_dir).glob("*.nc"))
    if not paths:
        return f"The notebooks have {NOT_RUN}: `{results_dir}` holds no results file."
    columns = ["python", *NUMBER_PACKAGES]
    lines = [
        "| results file | " + " | ".join(columns) + " | device |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for path in paths:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            attrs = dict(ds.attrs)
        if "versions" not in attrs:
            cells = ["not recorded"] * len(columns)
        else:
            now = json.loads(attrs["versions"])
            earlier = json.loads(attrs.get("earlier_versions", "[]"))
            # a resumed file: each earlier version its cells were computed with, before the current one
            cells = [
                " / ".join(dict.fromkeys([*(e.get(c, "?") for e in earlier), now.get(c, "?")]))
                for c in columns
            ]
        lines.append(
            f"| `{path.name}` | " + " | ".join(cells) + f" | {attrs.get('device', 'not recorded')} |"
        )
    return "\n".join(lines)


def _notebooks(n: int) -> str:
    return f"{n} notebook{'s' if n != 1 else ''}"


def timings_summary(repo: str | Path) -> str:
    """book/timings.md's summary: this build's total and per-notebook wall times, profile and machine,
    read from ``data/results/run_times.csv`` (the runner's record)."""
    from dode.companion.run_notebooks import RESULTS_DIR

    path = Path(repo) / RESULTS_DIR / "run_times.csv"
    if not path.is_file():
        return f"The notebooks have {NOT_RUN}: `data/results/run_times.csv` does not exist."
    with path.open(newline="") as f:
        # the runner writes a placeholder row without a time when no notebook has run yet
        rows = [r for r in csv.DictReader(f) if (r.get("wall time (s)") or "").strip()]
    if not rows:
        return f"The notebooks have {NOT_RUN}: `data/results/run_times.csv` is empty."
    profiles = _join(sorted({f"`{r['profile']}`" for r in rows}))
    machines = _join(sorted({r["machine"] for r in rows}))
    # rows of one invocation of the runner; a partial rerun keeps earlier runs' rows (no start: a record
    # written before the runner named its runs), and a sum over runs is no build's time
    runs: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        run = r.get("run started (UTC)") or ""
        runs.setdefault(run, []).append((r["notebook"], float(r["wall time (s)"])))
    latest = max(runs)  # timestamps sort as text; an unrecorded start ("") is the earliest
    times = runs[latest]
    total = sum(t for _, t in times)
    longest = max(times, key=lambda x: x[1])
    sums = (
        f"Their wall times add up to **{total:.0f} s ({total / 60:.1f} min)**; where the runner ran notebooks "
        f"side by side (`--jobs 2`) the build took less than this sum. The longest is {longest[0]} "
        f"({longest[1]:.0f} s)"
    )
    if len(runs) == 1:
        return f"This build: {_notebooks(len(times))}, profile {profiles}, on {machines}. {sums}; the table gives every notebook."
    earlier = [r for r in runs if r != latest]
    started = _join(f"started {r} UTC" if r else "whose start was not recorded" for r in sorted(earlier))
    kept = sum(len(runs[r]) for r in earlier)
    return (
        f"This book's pages come from {len(runs)} runs of the runner, profile {profiles}, on {machines}. The "
        f"latest, started {latest} UTC, ran {_notebooks(len(times))} ({_join(name for name, _ in times)}). {sums}. "
        f"The other {kept} rows of the table are earlier runs' ({started}), which the latest did not rerun: "
        "a sum over different runs is no build's time, so none is given."
    )
