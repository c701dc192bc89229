"""The paper's claims (``dode.companion.paper.CLAIMS``) checked against our results files.

Each check reads the results of the notebooks that bear on one claim and returns a :class:`Verdict`: the
claim, ``reproduced`` / ``partly`` / ``not reproduced`` / ``not run``, and the evidence in numbers. The
reproduction page of the book is drawn from these verdicts, so the marks follow the data: rerun an
experiment and the page changes with it. The rules every verdict follows are :data:`RULES`, which the
reproduction page prints as they stand here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dode.companion.labels import method_label
from dode.companion.paper import CLAIMS
from dode.companion.spread import paired_gain, side

__all__ = [
    "side",
    "joint_verdict_table",
    "RULES",
    "PAPER_SOLVERS",
    "SMALL_NFE",
    "Verdict",
    "VERDICTS",
    "FINDINGS",
    "paired_gains",
    "joint_verdicts",
    "check_all",
    "check_findings",
    "paper_teacher",
    "CHECKS",
    "EVIDENCE",
    "FINDING_CHECKS",
    "metric_name",
    "page_verdicts",
    "verdict_table",
    "page_reads",
    "grade_cells",
    "name_cells",
]

VERDICTS = ("reproduced", "partly", "not reproduced", "not run")

#: the solvers of the paper's Fig. 3, 4 and 9; a results file may hold more (e.g. a lower-order last step):
#: those are graded and reported apart, outside the tally of the paper's claims
PAPER_SOLVERS = ("ddim", "ipndm", "dpm_solver3", "deis3", "dpm_solver++", "edm")

#: "extremely small NFE" of the D-DPM-Solver-3 claim (``dpm3_stability``): the NFEs below this
SMALL_NFE = 10

#: the rules of every verdict, as the reproduction page states them (markdown)
RULES = f"""\
A claim is checked in the **cells** it speaks of: one (model, solver, NFE) of a results file, or what the
claim names instead (an NFE of a table, a step of the cost comparison). In each cell the D-solver's **paired
gain** is `base - D` per seed: both are evaluated on the same noise, so the evaluation noise cancels.

1. **A cell holds** when the claim is true there in every seed *and* by more than its spread: the mean
   paired gain exceeds the standard deviation of the paired gain over seeds. A cell whose mean gain is
   smaller than that spread is *inside the noise* and does not hold, whatever its sign.
2. **One seed has no spread**: a cell then holds by its sign alone, and the claim is at most *partly*
   reproduced, said so in its evidence. So does a cell with one value (the exact test bed's distances, the
   peers page's single run).
3. **Per model**: a claim or finding is graded for each model on its cells; its verdict is the weakest of
   its models' verdicts, and the evidence gives each model's.
4. **reproduced**: it holds in every cell it speaks of, with at least two seeds and at least two cells (one
   cell cannot show a statement about every cell); **partly**: it holds in at least half of its cells, and
   the evidence names every cell where it does not; **not reproduced**: it holds in fewer than half of its
   cells (the evidence names those where it does hold); **not run**: no results to grade.
5. The paper's claims are graded on the paper's solvers ({", ".join(PAPER_SOLVERS)}); other solver labels
   in a results file (variants such as a lower-order last step) are graded apart and reported beside the
   verdict, not counted in it.
6. A claim is graded on what was run: where the run cut the paper's protocol (the progressive-distillation
   recipe of Tab. 1) or cannot test part of a claim (GPU-days on a CPU), the verdict is at most *partly* and
   the evidence says what was cut or left untested.

The claims on the denoiser's correlation (Fig. 2), the trajectories (Fig. 5) and the ablations and
lookahead variants (Tab. 3, 4) state their own criterion in their evidence (a threshold on the cosine
similarity, a distance, a trend over K or B).
"""

#: verdicts from weakest to strongest (a claim on several models gets the weakest of theirs)
_STRENGTH = {"not run": -1, "not reproduced": 0, "partly": 1, "reproduced": 2}

#: findings beyond the paper (notebooks 02, 12, 13), checked like its claims: "reproduced" = it holds in this
#: build's results, "partly" = in some cells, "not reproduced" = in none
FINDINGS = {
    "best_choice": "at few NFE a D-solver is the best sampler for each model, better than every diffusers "
    "scheduler and every dode base solver on the same network and noise, on a noise-prediction and on an EDM "
    "data-prediction model (page 13)",
    "joint_fit": "the joint fit is never worse than the paper's greedy fit and beats the base solver where "
    "the greedy fit makes it worse (exact test bed, page 12)",
    "joint_verdict": "on the noise-prediction sweep (page 02) the joint fit turns every D-solver that the "
    "greedy fit leaves worse than its base solver into one better than its base (D-DPM-Solver-3 at NFE 5 in "
    "particular), and turns none the other way",
}


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str
    evidence: str

    def __post_init__(self):
        if self.claim not in CLAIMS and self.claim not in FINDINGS:
            raise ValueError(f"claim must be one of {sorted(CLAIMS) + sorted(FINDINGS)}, got {self.claim!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def statement(self) -> str:
        return CLAIMS.get(self.claim) or FINDINGS[self.claim]


def metric_name(ds) -> str:
    return "fid" if "fid" in ds else "fd"


def paired_gains(ds, method: str = "d-ode", base: str = "base") -> list[dict]:
    """One row per (solver, NFE) cell that holds both methods: mean and std over seeds of the paired gain
    ``base - method`` (positive: ``method`` is better), the number of seeds and of wins, and the base value.
    A file with a ``model`` dimension gives each model's rows, with the model named in each."""
    if "model" in ds.dims:
        return [
            {"model": m, **row}
            for m in ds.coords["model"].values.tolist()
            for row in paired_gains(ds.sel({"model": m}), method, base)
        ]
    var = metric_name(ds)
    rows = []
    for solver in ds.coords["solver"].values.tolist():
        for nfe in ds.coords["nfe"].values.tolist():
            cell = ds[var].sel({"solver": solver, "nfe": nfe})
            if method not in cell.coords["method"].values or base not in cell.coords["method"].values:
                continue
            row = paired_gain(cell.sel({"method": base}).values, cell.sel({"method": method}).values)
            if row["seeds"]:
                rows.append({"solver": solver, "nfe": int(nfe), **row})
    return rows


def _fmt(row: dict, var: str) -> str:
    spread = "" if not np.isfinite(row["std"]) else f" ± {row['std']:.2f}"
    model = f"{row['model']} " if row.get("model") else ""
    return (
        f"{model}{row['solver']} NFE {row['nfe']}: {var.upper()} {row['base']:.2f} → {row['method']:.2f} "
        f"(gain {row['gain']:+.2f}{spread}, {row['wins']}/{row['seeds']} seeds)"
    )


def _holds(row: dict) -> bool:
    """Rules 1-2 of :data:`RULES` for a paired-gain row: better in every seed by more than the spread (by its
    sign with one seed)."""
    return side(row) > 0


def name_cells(cells: list[dict]) -> str:
    """Cells named compactly, grouped by model and solver in their order: ``digits-edm edm NFE 3, 5, 7;
    digits-eps ddim NFE 5``. A cell may name a model, a solver, an NFE and a ``what`` (for the cells that are
    not an NFE, e.g. a step of the cost comparison)."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        where = tuple(str(c[k]) for k in ("model", "solver") if c.get(k) is not None)
        groups.setdefault(where, []).append(c)
    parts = []
    for where, group in groups.items():
        if all("nfe" in c for c in group):
            tail = "NFE " + ", ".join(str(c["nfe"]) for c in group)
        else:
            tail = ", ".join(str(c["nfe"]) if "nfe" in c else str(c.get("what", "")) for c in group)
        parts.append(" ".join([*where, tail]))
    return "; ".join(parts)


def grade_cells(cells: list[dict], holds: list[bool], seeds: int) -> tuple[str, str]:
    """Rules 2 and 4 of :data:`RULES` for one model: the verdict on ``cells`` (``holds``: whether the claim
    holds in each) and a phrase that names the cells where it does not (or, when not reproduced, where it
    does). ``seeds``: the fewest seeds behind any cell."""
    n, k = len(cells), sum(bool(h) for h in holds)
    failing = [c for c, h in zip(cells, holds, strict=True) if not h]
    holding = [c for c, h in zip(cells, holds, strict=True) if h]
    if not n:
        return "not run", "no cell to grade"
    if 2 * k < n:
        where = f"holds only at {name_cells(holding)}" if holding else "holds in none"
        return "not reproduced", f"{where} ({k} of {n} cells)"
    if failing:
        return "partly", f"fails at {name_cells(failing)} (holds in {k} of {n} cells)"
    if seeds < 2:
        every = "its one cell" if n == 1 else f"all {n} cells"
        return "partly", f"holds in {every} by its sign, but with one seed there is no spread to exceed"
    if n < 2:
        return "partly", f"holds in the one cell it speaks of ({name_cells(cells)}): one cell cannot show it"
    return "reproduced", f"holds in all {n} cells, each by more than its spread over seeds"


def grade_models(cells: list[dict], holds: list[bool], seeds: list[int]) -> tuple[str, str]:
    """Rule 3 of :data:`RULES`: each model's verdict on its cells (:func:`grade_cells`) and the weakest of
    them; returns the overall verdict and a line with each model's (``<model>: <verdict>: <phrase>; ...``)."""
    models = list(dict.fromkeys(c.get("model") for c in cells))
    verdicts, lines = [], []
    for model in models:
        idx = [i for i, c in enumerate(cells) if c.get("model") == model]
        # the line names the model once: its cells are named without it
        mine = [{k: v for k, v in cells[i].items() if k != "model"} for i in idx]
        verdict, phrase = grade_cells(mine, [holds[i] for i in idx], min((seeds[i] for i in idx), default=0))
        verdicts.append(verdict)
        lines.append(f"{model or 'all cells'}: {verdict}: {phrase}")
    if not verdicts:
        return "not run", "no cell to grade"
    return min(verdicts, key=_STRENGTH.__getitem__), "; ".join(lines)


def _model_of(ds) -> str | None:
    """The model a results file without a ``model`` dimension holds (its ``model`` attribute), if it names
    one."""
    return str(ds.attrs["model"]) if ds.attrs.get("model") else None


def _sweep_rows(results: dict, stems, keep=lambda row: True) -> tuple[list[dict], str]:
    """The paired-gain rows (:func:`paired_gains`) of the sweeps ``stems`` that ``keep`` accepts, each naming
    its model; and the metric's name."""
    rows, var = [], "fd"
    for stem in stems:
        if stem in results:
            ds = results[stem]
            var = metric_name(ds)
            model = _model_of(ds)
            rows += [{"model": model, **r} for r in paired_gains(ds) if keep(r)]
    return rows, var


def _graded_lines(rows: list[dict], var: str) -> list[str]:
    """One line per cell, with its side of rule 1 of :data:`RULES` (better beyond the spread: it holds)."""
    words = {1: "holds, better beyond the spread: ", 0: "inside the noise: ", -1: "worse beyond the spread: "}
    return [words[side(r)] + _fmt(r, var) for r in rows]


def _apart(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rule 5 of :data:`RULES`: the rows of the paper's solvers, and the others."""
    paper = [r for r in rows if r["solver"] in PAPER_SOLVERS]
    return paper, [r for r in rows if r["solver"] not in PAPER_SOLVERS]


def _other_solvers_line(rows: list[dict]) -> list[str]:
    """The verdict of rows outside the paper's solvers, reported beside (not in) the claim's."""
    if not rows:
        return []
    verdict, line = grade_models(rows, [_holds(r) for r in rows], [r["seeds"] for r in rows])
    return [f"other solver labels, not counted in the verdict (rule 5): {verdict} ({line})"]


def check_d_beats_base(results: dict) -> Verdict:
    """Fig. 3/4/9: D-solvers beat their base solvers for NFE >= 5, and the gap closes as NFE grows. Cells:
    every (model, paper's solver, NFE >= 5) of notebooks 02-04; the gap closes on a (model, solver) curve when
    its gain at the largest NFE is no larger than at the smallest (a curve where it does not caps that
    model at partly, named)."""
    rows, var = _sweep_rows(
        results, ("02_noise_prediction", "03_data_prediction", "04_dpm_solver_pp"), lambda r: r["nfe"] >= 5
    )
    if not rows:
        return Verdict("d_beats_base", "not run", "notebooks 02-04 have no results")
    rows, others = _apart(rows)
    if not rows:
        return Verdict("d_beats_base", "not run", "notebooks 02-04 hold none of the paper's solvers")
    holds = [_holds(r) for r in rows]
    verdict, line = grade_models(rows, holds, [r["seeds"] for r in rows])
    lines, not_closing = [line], []
    for curve in dict.fromkeys((r["model"], r["solver"]) for r in rows):
        mine = sorted((r for r in rows if (r["model"], r["solver"]) == curve), key=lambda r: r["nfe"])
        if len(mine) > 1 and abs(mine[-1]["gain"]) > abs(mine[0]["gain"]):
            not_closing.append(" ".join(str(c) for c in curve if c))
    if not_closing:  # on the first line, beside the models' verdicts, since it caps the claim at partly
        lines[0] += f"; the gap does not close as NFE grows for {', '.join(not_closing)}"
        if verdict == "reproduced":
            verdict = "partly"
    lines += _other_solvers_line(others)
    lines.append(f"{sum(holds)} of {len(rows)} (model, solver, NFE) cells hold")
    return Verdict("d_beats_base", verdict, "\n".join([*lines, *_graded_lines(rows, var)]))


def check_dpm3_stability(results: dict) -> Verdict:
    """Sec. 5 (Fig. 3): D-DPM-Solver-3 alleviates DPM-Solver-3's instability at extremely small NFE, beating
    it by a large margin. Cells: notebook 02's ``dpm_solver3`` cells at NFE below :data:`SMALL_NFE`, per
    model."""
    rows, var = _sweep_rows(
        results, ("02_noise_prediction",), lambda r: r["solver"] == "dpm_solver3" and r["nfe"] < SMALL_NFE
    )
    if not rows:
        return Verdict(
            "dpm3_stability", "not run", f"notebook 02 holds no DPM-Solver-3 cell below NFE {SMALL_NFE}"
        )
    verdict, line = grade_models(rows, [_holds(r) for r in rows], [r["seeds"] for r in rows])
    scope = (
        f"cells: DPM-Solver-3 at every NFE below {SMALL_NFE} of the sweep (the paper's extremely small NFE)"
    )
    return Verdict("dpm3_stability", verdict, "\n".join([line, scope, *_graded_lines(rows, var)]))


def check_formulations(results: dict) -> Verdict:
    """Tab. 2: D-DDIM beats D-DDIM-Sep, -All and -2, which do not improve on DDIM. Cells: the NFEs of
    notebook 07; one holds when D-DDIM beats every other formulation (paired, rule 1 of :data:`RULES`) and
    none of them beats DDIM by more than its spread."""
    ds = results.get("07_formulations")
    if ds is None:
        return Verdict("formulations", "not run", "notebook 07 has no results")
    var, model = metric_name(ds), _model_of(ds)
    others = [m for m in ds.coords["method"].values.tolist() if m not in ("base", "d-ode")]
    d_rows = {r["nfe"]: r for r in paired_gains(ds.sel({"solver": ["ddim"]}))}
    cells, holds, seeds, lines = [], [], [], []
    for nfe, d in d_rows.items():
        beats = {
            m: r for m in others for r in paired_gains(ds.sel({"solver": ["ddim"], "nfe": [nfe]}), "d-ode", m)
        }
        improve = {
            m: r
            for m in others
            for r in paired_gains(ds.sel({"solver": ["ddim"], "nfe": [nfe]}), m)
            if _holds(r)
        }
        not_beaten = [m for m, r in beats.items() if not _holds(r)]
        cells.append({"model": model, "nfe": nfe})
        holds.append(not not_beaten and not improve)
        seeds.append(min([d["seeds"], *(r["seeds"] for r in beats.values())]))
        lines.append(
            f"NFE {nfe}: {var.upper()} DDIM {d['base']:.2f}, D-DDIM {d['method']:.2f}, "
            + ", ".join(
                f"{m} {r['base']:.2f} (D-DDIM's gain {r['gain']:+.2f}, {r['wins']}/{r['seeds']} seeds)"
                for m, r in beats.items()
            )
        )
        if not_beaten:
            lines.append(f"  D-DDIM does not beat {', '.join(not_beaten)} by more than the spread")
        if improve:
            lines.append(f"  also better than DDIM, unlike in the paper: {', '.join(improve)}")
    if not cells:
        return Verdict("formulations", "not run", "notebook 07 holds no D-DDIM and DDIM cells")
    verdict, line = grade_models(cells, holds, seeds)
    return Verdict("formulations", verdict, "\n".join([line, *lines]))


def check_correlation(results: dict) -> Verdict:
    """Fig. 2: denoising outputs of neighbouring steps have cosine similarity near 1."""
    ds = results.get("01_denoiser_correlation")
    if ds is None or "similarity" not in ds:
        return Verdict("correlation", "not run", "notebook 01 has no results")
    lines, ok = [], True
    for model in ds.coords["model"].values.tolist():
        sim = np.asarray(ds["similarity"].sel(model=model).values, dtype=float)
        sim = sim[np.isfinite(sim).all(axis=1)][:, np.isfinite(sim).all(axis=0)]
        if sim.shape[0] < 2:
            continue
        neighbours = np.diag(sim, k=1)
        lines.append(
            f"{model}: neighbouring steps' cosine similarity mean {neighbours.mean():.4f}, "
            f"min {neighbours.min():.4f}; smallest entry of the whole matrix {sim.min():.3f}"
        )
        ok &= bool(neighbours.min() >= 0.9 and neighbours.mean() >= 0.99)
    if not lines:
        return Verdict("correlation", "not run", "notebook 01 holds no similarity matrix")
    return Verdict("correlation", "reproduced" if ok else "not reproduced", "\n".join(lines))


def check_trajectories(results: dict) -> Verdict:
    """Fig. 5: D-solvers' trajectories stay closer to a 1000-step DDIM than their base solvers'."""
    ds = results.get("05_trajectories")
    if ds is None or "distance" not in ds:
        return Verdict("trajectories", "not run", "notebook 05 has no results")
    lines, closer, total = [], 0, 0
    for solver in ds.coords["solver"].values.tolist():
        for nfe in ds.coords["nfe"].values.tolist():
            cell = ds["distance"].sel({"solver": solver, "nfe": nfe})
            if "d-ode" not in cell.coords["method"].values:
                continue
            finals = {}
            for method in ("base", "d-ode"):
                d = cell.sel({"method": method}).dropna("state", how="all")
                if d.sizes["state"] == 0:
                    continue
                finals[method] = (float(d.isel(state=-1).mean()), float(d.mean()))
            if len(finals) < 2:
                continue
            total += 1
            closer += finals["d-ode"][0] < finals["base"][0]
            lines.append(
                f"{solver} NFE {nfe}: distance of the final state to the reference {finals['base'][0]:.3f} (base) "
                f"vs {finals['d-ode'][0]:.3f} (D); averaged over the trajectory {finals['base'][1]:.3f} vs "
                f"{finals['d-ode'][1]:.3f}"
            )
    if not total:
        return Verdict("trajectories", "not run", "notebook 05 holds no base/D pair")
    verdict = "reproduced" if closer == total else "partly" if closer else "not reproduced"
    return Verdict("trajectories", verdict, "\n".join(lines))


def _seed_values(da) -> np.ndarray:
    return np.asarray(da.values, dtype=float).reshape(-1)


def _ablation_slices(ds, dim: str, other: str):
    """For each NFE: the D-DDIM metric over ``dim`` (a dict value -> per-seed array), at the value of ``other``
    where the sweep over ``dim`` was run (the one with most finite cells)."""
    var = metric_name(ds)
    out = {}
    for nfe in ds.coords["nfe"].values.tolist():
        da = ds[var].sel({"solver": ds.coords["solver"].values[0], "nfe": nfe, "method": "d-ode"})
        counts = np.isfinite(da).sum([d for d in da.dims if d != other]).values
        at = da.coords[other].values[int(np.argmax(counts))]
        sl = da.sel({other: at})
        values = {v: _seed_values(sl.sel({dim: v})) for v in sl.coords[dim].values.tolist()}
        values = {v: a[np.isfinite(a)] for v, a in values.items() if np.isfinite(a).any()}
        if len(values) > 1:
            out[nfe] = (at, values)
    return out


def check_ablation_K(results: dict) -> Verdict:
    """Tab. 3a: FID improves with the teacher's scale K."""
    ds = results.get("08_ablation_K_B")
    if ds is None or "K" not in ds.dims:
        return Verdict("ablation_K", "not run", "notebook 08 has no results")
    lines, marks = [], []
    for nfe, (b, values) in _ablation_slices(ds, "K", "B").items():
        ks = sorted(values)
        lo, hi = values[ks[0]], values[ks[-1]]
        n = min(len(lo), len(hi))
        paired = lo[:n] - hi[:n]  # positive: the largest K is better
        means = [float(values[k].mean()) for k in ks]
        monotone = all(a >= b for a, b in zip(means, means[1:], strict=False))
        marks.append(2 if (paired > 0).all() and monotone else 1 if paired.mean() > 0 else 0)
        lines.append(
            f"NFE {nfe}, B = {b}: D-DDIM "
            + ", ".join(f"K={k} {m:.3f}" for k, m in zip(ks, means, strict=True))
            + f"; K={ks[-1]} better than K={ks[0]} in {(paired > 0).sum()}/{n} seeds"
            + ("" if monotone else " (not monotone in K)")
        )
    if not marks:
        return Verdict("ablation_K", "not run", "notebook 08 holds no sweep over K")
    if ds.sizes["seed"] < 2:
        marks = [min(m, 1) for m in marks]
        lines.insert(0, "one seed only: indicative, not significant")
    verdict = "reproduced" if min(marks) == 2 else "partly" if max(marks) >= 1 else "not reproduced"
    return Verdict("ablation_K", verdict, "\n".join(lines))


def check_ablation_B(results: dict) -> Verdict:
    """Tab. 3b: FID and its spread over seeds shrink as the fitting batch B grows."""
    ds = results.get("08_ablation_K_B")
    if ds is None or "B" not in ds.dims:
        return Verdict("ablation_B", "not run", "notebook 08 has no results")
    lines, marks = [], []
    for nfe, (k, values) in _ablation_slices(ds, "B", "K").items():
        bs = sorted(values)
        lo, hi = values[bs[0]], values[bs[-1]]
        spread = {b: float(values[b].std(ddof=1)) if len(values[b]) > 1 else float("nan") for b in bs}
        better = hi.mean() < lo.mean() - (lo.std(ddof=1) if len(lo) > 1 else 0.0)
        tighter = spread[bs[-1]] < spread[bs[0]]
        marks.append(int(better) + int(tighter))
        lines.append(
            f"NFE {nfe}, K = {k}: D-DDIM "
            + ", ".join(f"B={b} {values[b].mean():.3f} ± {spread[b]:.3f}" for b in bs)
            + f"; mean {'lower beyond the spread' if better else 'not lower beyond the spread'} at B={bs[-1]}, "
            + f"spread {'smaller' if tighter else 'not smaller'}"
        )
    if not marks:
        return Verdict("ablation_B", "not run", "notebook 08 holds no sweep over B")
    verdict = "reproduced" if min(marks) == 2 else "partly" if max(marks) >= 1 else "not reproduced"
    return Verdict("ablation_B", verdict, "\n".join(lines))


def check_lookahead(results: dict) -> Verdict:
    """Tab. 4: D-DDIM beats LA-DDIM except at NFE 50; Fixed-D-DDIM can match it with a grid search. Each
    constant is the one chosen on the run's tuning seeds (:func:`dode.companion.plots.best_constant`), and
    the cells are graded by :data:`RULES` on the evaluation seeds: LA-DDIM's cells (NFE < 50) hold where
    D-DDIM is better by more than the spread, Fixed-D-DDIM's where it is not worse than D-DDIM by more than
    the spread ("can match")."""
    from dode.companion.plots import best_constant

    ds = results.get("09_lookahead_fixed")
    if ds is None or "lambda_value" not in ds.dims:
        return Verdict("lookahead", "not run", "notebook 09 has no results")
    held = ds.coords["method"].values.tolist()
    if not {"d-ode", "lookahead", "fixed"} <= set(held):
        return Verdict("lookahead", "not run", f"notebook 09 holds the methods {held} only")
    var = metric_name(ds)
    reduced, best = best_constant(ds, var)
    cells, holds, seeds, lines = [], [], [], []
    for method, gains, holds_if in (
        ("lookahead", paired_gains(reduced, "d-ode", "lookahead"), lambda row: side(row) > 0),
        ("fixed", paired_gains(reduced, "fixed", "d-ode"), lambda row: side(row) >= 0),
    ):
        for row in gains:
            if method == "lookahead" and row["nfe"] >= 50:
                continue
            chosen = float(best.sel({"solver": row["solver"], "method": method, "nfe": row["nfe"]}))
            cells.append({"solver": method_label(row["solver"], method), "nfe": row["nfe"]})
            holds.append(holds_if(row))
            seeds.append(row["seeds"])
            d_ode, other = method_label(row["solver"], "d-ode"), method_label(row["solver"], method)
            pair = (d_ode, other) if method == "lookahead" else (other, d_ode)  # (method, base) of the row
            spread = "" if not np.isfinite(row["std"]) else f" ± {row['std']:.2f}"
            lines.append(
                f"NFE {row['nfe']}: {pair[0]} {row['method']:.2f} against {pair[1]} {row['base']:.2f} "
                f"({other} at λ = {chosen:g}, chosen on the tuning seed; {pair[0]}'s gain "
                f"{row['gain']:+.2f}{spread}, {row['wins']}/{row['seeds']} seeds)"
            )
    if not cells:
        return Verdict("lookahead", "not run", "notebook 09 holds no complete NFE")
    verdict, phrase = grade_cells(cells, holds, min(seeds))
    lines.insert(0, phrase)
    if not any(c["nfe"] < 50 and c["solver"].startswith("LA-") for c in cells):
        lines.append("no NFE below 50 in this profile: the LA-DDIM half of the claim is untested")
    return Verdict("lookahead", verdict, "\n".join(lines))


def _recipe_cut(ds) -> list[str]:
    """How the progressive-distillation recipe stored in notebook 10's results (its ``parameters``
    attribute) departs from the paper profile's, i.e. Salimans & Ho's released configuration: one
    ``key here (paper's)`` entry per differing key."""
    import json

    from dode.companion.protocols import PROTOCOLS

    paper_recipe = PROTOCOLS["10_timing"]["paper"]["pd"]
    try:
        ran = json.loads(ds.attrs.get("parameters", "{}")).get("pd") or {}
    except ValueError:
        ran = {}
    if not ran:
        return ["recipe not recorded in the results file"]
    keys = [k for k in paper_recipe if k != "checkpoint_every" and ran.get(k) != paper_recipe[k]]
    return [f"{k} {ran.get(k, 'unset')} (paper's {paper_recipe[k]})" for k in keys]


def check_cost(results: dict) -> Verdict:
    """Tab. 1: D-ODE's distillation takes minutes, where distilling the network (progressive distillation,
    PD) takes GPU-days to reach the same quality. Graded on what notebook 10 ran (rule 6 of :data:`RULES`).
    Cells: the longest D-ODE fit within 5 minutes; PD at least 10x the longest fit; at each NFE where a PD
    student was scored, the PD student not better than D-DDIM by more than its spread (otherwise D-ODE is not
    "as good at far lower cost"). The GPU-days half is untested off the paper profile, and a PD recipe cut
    below the paper's caps the verdict at partly."""
    ds = results.get("10_timing")
    if ds is None or "fit_seconds" not in ds:
        return Verdict("cost", "not run", "notebook 10 has no results")
    fits = ds["fit_seconds"].sel({"method": "d-ode"}).mean("seed")
    fit_max = float(np.nanmax(fits.values)) if np.isfinite(fits.values).any() else float("nan")
    if not np.isfinite(fit_max):
        return Verdict("cost", "not run", "notebook 10 holds no fit times")
    var, model = metric_name(ds), _model_of(ds)
    lines = [f"longest D-ODE fit (teacher + student runs + least squares): {fit_max:.1f} s"]
    cells, holds, seeds = [{"model": model, "what": "D-ODE fit within minutes"}], [fit_max <= 300], [2]
    if "cumulative_train_seconds" in ds and np.isfinite(ds["cumulative_train_seconds"].values).any():
        pd_seconds = float(np.nanmax(ds["cumulative_train_seconds"].values))
        lines.append(
            f"progressive distillation, all halvings run here: {pd_seconds:.1f} s ({pd_seconds / fit_max:.0f}x "
            "the longest fit)"
        )
        cells.append({"model": model, "what": "PD at least 10x the fit"})
        holds.append(pd_seconds >= 10 * fit_max)
        seeds.append(2)
    if "pd" in ds.coords["method"].values and "ddim" in ds.coords["solver"].values:
        # paired gain of the PD student over D-DDIM (same evaluation noise): positive, the student is better
        for row in paired_gains(ds.sel({"solver": ["ddim"]}), "pd", "d-ode"):
            student_better = _holds(row)
            cells.append({"model": model, "what": f"D-DDIM as good as PD at NFE {row['nfe']}"})
            holds.append(not student_better)
            seeds.append(row["seeds"])
            lines.append(
                f"NFE {row['nfe']}: D-DDIM {var.upper()} {row['base']:.2f}, PD student {row['method']:.2f}"
                + (" -- the PD student is better" if student_better else "")
            )
    verdict, line = grade_models(cells, holds, seeds)
    cut = _recipe_cut(ds)
    if cut:
        lines.append("PD recipe cut below the paper's (Salimans & Ho's): " + ", ".join(cut))
    if ds.attrs.get("profile") != "paper" or cut:
        lines.append("untested here: PD's GPU-days (the paper profile's full recipe on a GPU)")
        if verdict == "reproduced":
            verdict, line = "partly", line.replace(": reproduced:", ": partly (rule 6):", 1)
    return Verdict("cost", verdict, "\n".join([line, *lines]))


#: claim -> the notebooks whose results its check reads (the evidence behind the verdict)
EVIDENCE = {
    "d_beats_base": ("02_noise_prediction", "03_data_prediction", "04_dpm_solver_pp"),
    "formulations": ("07_formulations",),
    "correlation": ("01_denoiser_correlation",),
    "trajectories": ("05_trajectories",),
    "ablation_K": ("08_ablation_K_B",),
    "ablation_B": ("08_ablation_K_B",),
    "lookahead": ("09_lookahead_fixed",),
    "cost": ("10_timing",),
    "dpm3_stability": ("02_noise_prediction",),
    "best_choice": ("13_peers",),
    "joint_fit": ("12_exact_testbed",),
    "joint_verdict": ("02_noise_prediction",),
}

#: claim -> its check (every claim of dode.companion.paper.CLAIMS has one)
CHECKS: dict[str, Callable[[dict], Verdict]] = {
    "d_beats_base": check_d_beats_base,
    "formulations": check_formulations,
    "correlation": check_correlation,
    "trajectories": check_trajectories,
    "ablation_K": check_ablation_K,
    "ablation_B": check_ablation_B,
    "lookahead": check_lookahead,
    "cost": check_cost,
    "dpm3_stability": check_dpm3_stability,
}


def load_results(results_dir: str | Path, stems) -> dict:
    """The results files that exist under ``results_dir``, opened and loaded, keyed by notebook stem."""
    import xarray as xr

    out = {}
    for stem in stems:
        path = Path(results_dir) / f"{stem}.nc"
        if path.is_file():
            with xr.open_dataset(path) as ds:
                out[stem] = ds.load()
    return out


def check_all(results: dict) -> list[Verdict]:
    """A verdict for every claim of the paper, in the order of ``dode.companion.paper.CLAIMS``."""
    out = []
    for claim in CLAIMS:
        check = CHECKS[claim]
        out.append(check(results))
    return out


def _peers_models(ds) -> list[tuple[str | None, object]]:
    """``(model, its cells)`` of a peers results file (one ``(None, ds)`` for a file without a model
    dimension), each without the samplers and NFEs that model did not run."""
    from dode.companion.peers import model_results

    if "model" not in ds.dims:
        return [(None, ds)]
    return [(m, model_results(ds, m)) for m in ds.coords["model"].values.tolist()]


def _mean_std(row_mean: float, values) -> str:
    """``mean`` or ``mean ± std`` over seeds (the std where there are two seeds or more)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return f"{row_mean:.2f}" + (f" ± {values.std(ddof=1):.2f}" if values.size > 1 else "")


def check_best_choice(results: dict) -> Verdict:
    """Page 13, per model and NFE: whether the best D-solver beats both the best diffusers scheduler and the
    best dode base solver, each difference by rule 1 (:func:`side` on the paired gain over seeds: in every
    seed and by more than the spread; by its sign with one seed). Where the file records the samplers
    selected on the tuning noise, those are each group's best (:func:`dode.companion.peers.best_names`), the
    diffusers scheduler's own configuration standing in for the tuned one where it scores lower."""
    from dode.companion.peers import best_names, default_of, paired_row, sampler_label

    ds = results.get("13_peers")
    if ds is None:
        return Verdict("best_choice", "not run", "notebook 13 has no results")
    var, lines, cells, wins, seeds = metric_name(ds), [], [], [], []
    for model, cells_of in _peers_models(ds):
        for nfe in cells_of.coords["nfe"].values.tolist():
            best = best_names(cells_of, var, nfe)
            if len(best) < 3:
                continue
            (d_name, d), (p_name, p), (b_name, b) = best["D"], best["diffusers"], best["base"]
            default = default_of(cells_of, nfe)  # the scheduler's own configuration, where it scores lower
            if default is not None:
                mean = float(np.mean(cells_of[var].sel({"sampler": default, "nfe": nfe}).values))
                if mean < p:
                    p_name, p = default, mean
            vs_peer = paired_row(cells_of, var, nfe, p_name, d_name)
            vs_base = paired_row(cells_of, var, nfe, b_name, d_name)
            won = side(vs_peer) > 0 and side(vs_base) > 0
            cells.append({"model": model, "nfe": nfe})
            wins.append(won)
            seeds.append(min(vs_peer["seeds"], vs_base["seeds"]))

            def value(name, mean, cells_of=cells_of, nfe=nfe):
                return _mean_std(mean, cells_of[var].sel({"sampler": name, "nfe": nfe}).values)

            lines.append(
                f"{model + ' ' if model else ''}NFE {nfe}: "
                f"{'D-ODE is the best choice' if won else 'D-ODE is not the best choice'}: best D-solver "
                f"{sampler_label(d_name)} {value(d_name, d)}, best diffusers scheduler {sampler_label(p_name)} "
                f"{value(p_name, p)} ({p / d:.1f}x the D-solver's), best dode base solver "
                f"{sampler_label(b_name)} {value(b_name, b)}"
            )
    if not wins:
        return Verdict("best_choice", "not run", "notebook 13 holds no NFE with all three kinds of sampler")
    verdict, line = grade_models(cells, wins, seeds)
    return Verdict("best_choice", verdict, "\n".join([line, *lines]))


def paper_teacher(label: str) -> str:
    """The test bed's teacher coordinate (``self`` or ``ddim``) of the paper's teacher for solver ``label``."""
    from dode.companion.experiments import solver_spec, teacher_of

    return "self" if teacher_of(label, "paper") == solver_spec(label)[0] else "ddim"


def check_joint_fit(results: dict) -> Verdict:
    """Page 12 (exact distances, fresh noise): the joint fit against the greedy fit and the base solver.
    Cells: each (test-bed schedule, solver, NFE) with all three; one holds when the joint D-solver is no
    worse than the greedy one and, where the greedy fit makes the base solver worse, better than the base
    solver. One value per cell (no seeds). On digits the joint fit is graded by ``joint_verdict`` (page 02)."""
    lines, cells, holds = [], [], []
    ds = results.get("12_exact_testbed")
    if ds is not None:
        never_worse, repairs = [], []
        for sched in ds.coords["schedule"].values.tolist():
            for label in ds.coords["solver"].values.tolist():
                for nfe in ds.coords["nfe"].values.tolist():
                    d = ds["distance_fresh"].sel({"schedule": sched, "solver": label, "nfe": nfe})
                    teacher = paper_teacher(label)
                    base = float(d.sel({"method": "base", "teacher": "ddim"}))
                    greedy = float(d.sel({"method": "d-ode", "teacher": teacher}))
                    joint = float(d.sel({"method": "d-ode-joint", "teacher": teacher}))
                    if not np.isfinite([base, greedy, joint]).all():
                        continue
                    cells.append({"model": f"exact test bed {sched}", "solver": label, "nfe": nfe})
                    holds.append(joint <= greedy and (greedy <= base or joint < base))
                    never_worse.append(joint <= greedy)
                    if greedy > base:
                        repairs.append(joint < base)
                    if greedy > base or joint > greedy:
                        lines.append(
                            f"exact test bed, {sched} {label} NFE {nfe}: distance base {base:.3f}, "
                            f"greedy {greedy:.3f}, joint {joint:.3f}"
                        )
        lines.insert(
            0,
            f"exact test bed (fresh noise): joint no farther from the exact solution than greedy in "
            f"{sum(never_worse)}/{len(never_worse)} cells; greedy worse than base in {len(repairs)} cells, "
            f"joint better than base in {sum(repairs)} of them",
        )
    if not cells:
        return Verdict("joint_fit", "not run", "notebook 12 holds no joint-fit cell")
    verdict, line = grade_models(cells, holds, [1] * len(cells))
    return Verdict("joint_fit", verdict, "\n".join([line, *lines]))


_SIDE = {1: "better than base", -1: "worse than base", 0: "inside the noise"}


def joint_verdicts(ds) -> list[dict]:
    """Per ([model,] solver, NFE) cell with greedy and joint results: the paired gains over the base solver
    (:func:`paired_gains`) of the greedy D-solver (``d-ode``) and of the joint one (``d-ode-joint``), each
    one's side of the base solver (:func:`side`: +1 better, -1 worse, 0 inside the noise) and
    whether the joint fit changes it."""
    joint = {(r.get("model"), r["solver"], r["nfe"]): r for r in paired_gains(ds, "d-ode-joint")}
    rows = []
    for g in paired_gains(ds, "d-ode"):
        j = joint.get((g.get("model"), g["solver"], g["nfe"]))
        if j is None:
            continue
        side_g, side_j = side(g), side(j)
        rows.append(
            {
                **({"model": g["model"]} if "model" in g else {}),
                "solver": g["solver"],
                "nfe": g["nfe"],
                "base": g["base"],
                "greedy": g["method"],
                "joint": j["method"],
                "greedy_wins": g["wins"],
                "joint_wins": j["wins"],
                "seeds": min(g["seeds"], j["seeds"]),
                "greedy_side": side_g,
                "joint_side": side_j,
                "changed": side_g != side_j,
            }
        )
    return rows


#: how page 02's table words a side of the base solver (:func:`side`)
_SIDE_WORDS = {1: "better", -1: "worse", 0: "inside the noise"}


def joint_verdict_table(ds, metric: str):
    """Page 02's table of :func:`joint_verdicts`, one row per ([model,] solver, NFE) with both fits: base,
    greedy and joint means, each fit's side of the base solver and whether the joint fit changes it. An empty
    table (the same columns) where the file has no joint-fit cells."""
    import pandas as pd

    from dode.companion.labels import SOLVER_NAMES

    rows = joint_verdicts(ds)
    index = [*(["model"] if "model" in ds.dims else []), "solver", "NFE"]
    columns = [
        f"base {metric.upper()}",
        "greedy",
        "joint",
        "greedy vs base",
        "joint vs base",
        "verdict changes",
    ]
    table = pd.DataFrame(
        [
            {
                **({"model": r["model"]} if "model" in r else {}),
                "solver": SOLVER_NAMES.get(r["solver"], r["solver"]),
                "NFE": r["nfe"],
                columns[0]: round(r["base"], 2),
                "greedy": round(r["greedy"], 2),
                "joint": round(r["joint"], 2),
                "greedy vs base": _SIDE_WORDS[r["greedy_side"]],
                "joint vs base": _SIDE_WORDS[r["joint_side"]],
                "verdict changes": "yes" if r["changed"] else "no",
            }
            for r in rows
        ],
        columns=[*index, *columns],
    )
    return table.set_index(index)


def check_joint_verdict(results: dict) -> Verdict:
    """Page 02: where the joint fit moves a D-solver to the other side of its base solver (or off it). Cells
    the finding speaks of: each (model, paper's solver, NFE) where the greedy D-solver is worse than its base
    in the mean (it holds there when the joint one is better than the base by more than the spread), and
    each where the joint D-solver is worse than the base by more than the spread while the greedy one is
    not (it never holds there: the joint fit turned it the other way)."""
    ds = results.get("02_noise_prediction")
    rows = joint_verdicts(ds) if ds is not None else []
    if not rows:
        return Verdict("joint_verdict", "not run", "notebook 02 holds no joint-fit cells")
    var = metric_name(ds)
    rows, others = (
        [r for r in rows if r["solver"] in PAPER_SOLVERS],
        [r for r in rows if r["solver"] not in PAPER_SOLVERS],
    )
    worse = [r for r in rows if r["greedy"] > r["base"]]
    spoiled = [r for r in rows if r["greedy_side"] >= 0 and r["joint_side"] < 0 and r["greedy"] <= r["base"]]
    spoken = worse + spoiled
    holds = [r["joint_side"] > 0 for r in worse] + [False] * len(spoiled)
    lines = [
        f"{len(rows)} (model, solver, NFE) cells with both fits; the joint fit changes the side of the base "
        f"solver in {sum(r['changed'] for r in rows)}; greedy worse than base (in the mean) in {len(worse)}, "
        f"joint better than base beyond the spread in {sum(holds)} of them; joint worse than base where greedy "
        f"is not in {len(spoiled)}"
    ]
    for r in rows:
        if r["changed"] or r in spoken or (r["solver"] == "dpm_solver3" and r["nfe"] == 5):
            where = (f"{r['model']} " if "model" in r else "") + f"{r['solver']} NFE {r['nfe']}"
            lines.append(
                f"{where}: {var.upper()} base {r['base']:.2f}, greedy {r['greedy']:.2f} "
                f"({_SIDE[r['greedy_side']]}, {r['greedy_wins']}/{r['seeds']} seeds), joint {r['joint']:.2f} "
                f"({_SIDE[r['joint_side']]}, {r['joint_wins']}/{r['seeds']} seeds)"
            )
    if others:
        moved = [r for r in others if r["changed"]]
        lines.append(
            f"other solver labels, not counted in the verdict (rule 5): {len(others)} cells, the joint fit changes "
            f"the side in {len(moved)}" + (f" ({name_cells(moved)})" if moved else "")
        )
    if not spoken:
        lines.insert(
            0, "the greedy fit leaves no D-solver worse than its base: the finding speaks of no cell"
        )
        return Verdict("joint_verdict", "not reproduced", "\n".join(lines))
    verdict, line = grade_models(spoken, holds, [r["seeds"] for r in spoken])
    return Verdict("joint_verdict", verdict, "\n".join([line, *lines]))


FINDING_CHECKS: dict[str, Callable[[dict], Verdict]] = {
    "best_choice": check_best_choice,
    "joint_fit": check_joint_fit,
    "joint_verdict": check_joint_verdict,
}


def check_findings(results: dict) -> list[Verdict]:
    """A verdict for every finding beyond the paper (:data:`FINDINGS`)."""
    return [FINDING_CHECKS[f](results) for f in FINDINGS]


def page_reads(stem: str) -> tuple[str, ...]:
    """The other notebooks whose results the page of notebook ``stem`` reads for its verdicts
    (:func:`page_verdicts`): a claim of the paper is graded on the page's own results (the reproduction page
    puts each claim's notebooks together), a finding beyond the paper on the results of the notebooks that
    :data:`EVIDENCE` lists before ``stem`` too, so that the page states the reproduction page's verdict on it
    (none today: each finding is graded on one page's results, or on the reproduction page). The notebook declares these as its ``needs``
    (its metadata), and the book's runner runs them first."""
    reads = []
    for claim in FINDINGS:
        stems = list(EVIDENCE[claim])
        if stem in stems:
            reads += stems[: stems.index(stem)]
    return tuple(dict.fromkeys(reads))


def verdict_table(page):
    """The reproduction page's table, as HTML: claim, the paper's figure or table and number, ours (the
    evidence's first line), the verdict (coloured by the book's CSS, ``verdict-<verdict>``), and the evidence:
    the full text behind a click and links to the notebooks it comes from (:data:`EVIDENCE`).

    ``page``: the dataset of ``11_reproduction.nc`` (``statement``, ``verdict``, ``evidence`` per claim)."""
    from html import escape

    from IPython.display import HTML

    from dode.companion.paper import CLAIM_SOURCES

    rows = []
    for claim in page.coords["claim"].values.tolist():
        row = page.sel(claim=claim)
        verdict = str(row["verdict"].values)
        lines = str(row["evidence"].values).splitlines() or [""]
        # the findings beyond the paper (claims.FINDINGS) have no figure or number of the paper's
        where, number = CLAIM_SOURCES.get(claim, ("beyond the paper", "—"))
        links = ", ".join(f'<a href="{stem}.html">{escape(stem[:2])}</a>' for stem in EVIDENCE[claim])
        details = "<br>".join(escape(line) for line in lines)
        rows.append(
            "<tr>"
            f'<td style="text-align:left;white-space:normal">{escape(str(row["statement"].values))}</td>'
            f"<td>{escape(where)}</td>"
            f'<td style="text-align:left;white-space:normal">{escape(number)}</td>'
            f'<td style="text-align:left;white-space:normal">{escape(lines[0])}</td>'
            f'<td class="verdict-{verdict.replace(" ", "-")}">{escape(verdict)}</td>'
            f'<td style="text-align:left;white-space:normal">notebooks {links}'
            f"<details><summary>evidence</summary><small>{details}</small></details></td>"
            "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("claim", "paper", "paper's number", "ours", "verdict", "evidence")
    )
    return HTML(
        f'<table class="dataframe verdicts"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def page_verdicts(path: str | Path) -> str:
    """Markdown: the verdict on every claim and finding that one notebook's results file bears on
    (:data:`EVIDENCE`), computed from that file (and, for a finding, the files of :func:`page_reads`, from
    the same folder). An experiment's page states its verdict in this build's numbers; the reproduction page
    puts every notebook's evidence together."""
    path = Path(path)
    results = load_results(path.parent, [path.stem])
    if path.stem not in results:
        raise FileNotFoundError(f"no results file {path}: run its notebook first")
    with_reads = {**load_results(path.parent, page_reads(path.stem)), **results}
    blocks = []
    for claim, stems in EVIDENCE.items():
        if path.stem not in stems:
            continue
        verdict = CHECKS[claim](results) if claim in CHECKS else FINDING_CHECKS[claim](with_reads)
        source = "Paper" if claim in CLAIMS else "Beyond the paper"
        first, *rest = verdict.evidence.splitlines() or [""]
        lines = [f"**{source}:** {verdict.statement}.", f"**Here: {verdict.verdict}** ({first.strip()})."]
        read = [s for s in stems if s in with_reads] if claim in FINDINGS else [path.stem]
        if set(stems) - set(read):
            rest.insert(
                0,
                f"graded on the results of {', '.join(read)}; the reproduction page adds "
                f"{', '.join(s for s in stems if s not in read)}",
            )
        bullets = "\n".join(f"- {line.strip()}" for line in rest if line.strip())
        blocks.append("  \n".join(lines) + (f"\n\n{bullets}" if bullets else ""))
    if not blocks:
        known = sorted({s for stems in EVIDENCE.values() for s in stems})
        raise ValueError(f"path must be the results file of one of {known}, got {str(path)!r}")
    return "\n\n".join(blocks)
