"""The paper's claims (``dode.paper.CLAIMS``) checked against our results files.

Each check reads the results of the notebooks that bear on one claim and returns a :class:`Verdict`: the
claim, ``reproduced`` / ``partly`` / ``not reproduced`` / ``not run``, and the evidence in numbers. The
reproduction page of the book is drawn from these verdicts, so the marks follow the data: rerun an
experiment and the page changes with it.

Rules applied throughout: a difference counts only when it is consistent across seeds (same evaluation
noise, paired) *and* its mean exceeds its spread over seeds; with one seed a difference is reported but
called inconclusive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .paper import CLAIMS

__all__ = ["Verdict", "VERDICTS", "paired_gains", "check_all", "CHECKS", "metric_name"]

VERDICTS = ("reproduced", "partly", "not reproduced", "not run")


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str
    evidence: str

    def __post_init__(self):
        if self.claim not in CLAIMS:
            raise ValueError(f"claim must be one of {sorted(CLAIMS)}, got {self.claim!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def statement(self) -> str:
        return CLAIMS[self.claim]


def metric_name(ds) -> str:
    return "fid" if "fid" in ds else "fd"


def paired_gains(ds, method: str = "d-ode", base: str = "base") -> list[dict]:
    """One row per (solver, NFE) cell that holds both methods: mean and std over seeds of the paired gain
    ``base - method`` (positive: ``method`` is better), the number of seeds and of wins, and the base value."""
    var = metric_name(ds)
    rows = []
    for solver in ds.coords["solver"].values.tolist():
        for nfe in ds.coords["nfe"].values.tolist():
            cell = ds[var].sel({"solver": solver, "nfe": nfe})
            if method not in cell.coords["method"].values or base not in cell.coords["method"].values:
                continue
            b = np.asarray(cell.sel({"method": base}).values, dtype=float)
            m = np.asarray(cell.sel({"method": method}).values, dtype=float)
            ok = np.isfinite(b) & np.isfinite(m)
            if not ok.any():
                continue
            gain = b[ok] - m[ok]
            rows.append(
                {
                    "solver": solver,
                    "nfe": int(nfe),
                    "base": float(b[ok].mean()),
                    "method": float(m[ok].mean()),
                    "gain": float(gain.mean()),
                    "std": float(gain.std(ddof=1)) if gain.size > 1 else float("nan"),
                    "seeds": int(gain.size),
                    "wins": int((gain > 0).sum()),
                }
            )
    return rows


def _significant(row: dict) -> int:
    """+1: the method is better in every seed and by more than the spread; -1: worse likewise; 0: neither.
    With a single seed there is no spread: the sign alone decides, and callers cap the verdict at ``partly``."""
    if row["seeds"] < 2:
        return int(np.sign(row["gain"]))
    if row["wins"] == row["seeds"] and row["gain"] > row["std"]:
        return 1
    if row["wins"] == 0 and -row["gain"] > row["std"]:
        return -1
    return 0


def _fmt(row: dict, var: str) -> str:
    spread = "" if not np.isfinite(row["std"]) else f" ± {row['std']:.2f}"
    return (
        f"{row['solver']} NFE {row['nfe']}: {var.upper()} {row['base']:.2f} → {row['method']:.2f} "
        f"(gain {row['gain']:+.2f}{spread}, {row['wins']}/{row['seeds']} seeds)"
    )


def check_d_beats_base(results: dict) -> Verdict:
    """Fig. 3/4/9: D-solvers beat their base solvers for NFE >= 5, and the gap closes as NFE grows."""
    rows, var = [], "fd"
    for stem in ("02_noise_prediction", "03_data_prediction", "04_dpm_solver_pp"):
        if stem in results:
            var = metric_name(results[stem])
            rows += [r for r in paired_gains(results[stem]) if r["nfe"] >= 5]
    if not rows:
        return Verdict("d_beats_base", "not run", "notebooks 02-04 have no results")
    marks = [_significant(r) for r in rows]
    better = [r for r, s in zip(rows, marks, strict=True) if s > 0]
    worse = [r for r, s in zip(rows, marks, strict=True) if s < 0]
    closing = []
    for solver in sorted({r["solver"] for r in rows}):
        mine = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["nfe"])
        if len(mine) > 1:
            closing.append(abs(mine[-1]["gain"]) <= abs(mine[0]["gain"]))
    lines = [f"{len(better)} of {len(rows)} (solver, NFE) cells significantly better, {len(worse)} worse"]
    lines += [
        ("better: " if s > 0 else "worse: " if s < 0 else "inside the noise: ") + _fmt(r, var)
        for r, s in zip(rows, marks, strict=True)
    ]
    if closing:
        lines.append(
            f"gap at the largest NFE no larger than at the smallest for {sum(closing)}/{len(closing)} solvers"
        )
    single_seed = all(r["seeds"] < 2 for r in rows)
    if single_seed:
        lines.insert(0, "one seed only: signs are indicative, not significant")
    if not worse and len(better) == len(rows) and all(closing) and not single_seed:
        verdict = "reproduced"
    elif len(better) > len(worse):
        verdict = "partly"
    else:
        verdict = "not reproduced"
    return Verdict("d_beats_base", verdict, "\n".join(lines))


def check_formulations(results: dict) -> Verdict:
    """Tab. 2: D-DDIM beats D-DDIM-Sep, -All and -2, which do not improve on DDIM."""
    ds = results.get("07_formulations")
    if ds is None:
        return Verdict("formulations", "not run", "notebook 07 has no results")
    var = metric_name(ds)
    lines, ok = [], True
    for nfe in ds.coords["nfe"].values.tolist():
        vals = ds[var].sel({"solver": "ddim", "nfe": nfe}).mean("seed")
        means = {m: float(vals.sel({"method": m})) for m in vals.coords["method"].values.tolist()}
        means = {m: v for m, v in means.items() if np.isfinite(v)}
        if "d-ode" not in means or "base" not in means:
            continue
        best = min(means, key=means.get)
        others = {m: v for m, v in means.items() if m not in ("d-ode", "base")}
        improve = [m for m, v in others.items() if v < means["base"]]
        lines.append(
            f"NFE {nfe}: " + ", ".join(f"{m} {v:.2f}" for m, v in sorted(means.items(), key=lambda kv: kv[1]))
        )
        if best != "d-ode":
            ok = False
            lines.append(f"  best is {best}, not d-ode")
        if improve:
            lines.append(f"  also better than DDIM: {', '.join(improve)}")
    if not lines:
        return Verdict("formulations", "not run", "notebook 07 holds no D-DDIM and DDIM cells")
    return Verdict("formulations", "reproduced" if ok else "partly", "\n".join(lines))


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


#: claim -> its check; claims without a check here are filled in by the notebooks' own checks below
CHECKS: dict[str, Callable[[dict], Verdict]] = {
    "d_beats_base": check_d_beats_base,
    "formulations": check_formulations,
    "correlation": check_correlation,
    "trajectories": check_trajectories,
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
    """A verdict for every claim of the paper, in the order of ``dode.paper.CLAIMS``."""
    out = []
    for claim in CLAIMS:
        check = CHECKS.get(claim)
        out.append(check(results) if check else Verdict(claim, "not run", "no check in this companion yet"))
    return out
