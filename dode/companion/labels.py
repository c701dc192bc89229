"""What figures and tables call solvers and methods: the paper's names (DDIM, D-DDIM, D-DDIM-Sep, ...)."""

__all__ = ["SOLVER_NAMES", "count", "method_label"]

#: solver label of the sweeps (``experiments.SOLVER_LABELS``) -> the name the paper gives it
SOLVER_NAMES = {
    "ddim": "DDIM",
    "ipndm": "iPNDM",
    "deis3": "DEIS-3",
    "deis2": "DEIS-2",
    "ipndm_lof": "iPNDM-LOF",  # lower_order_final: the last steps of lower order
    "deis3_lof": "DEIS-3-LOF",
    "deis1": "DEIS-1",
    "deis1_lof": "DEIS-1-LOF",
    "deis2_lof": "DEIS-2-LOF",
    "unipc_bh1": "UniPC-2 bh1",
    "unipc_bh2": "UniPC-2 bh2",
    "unipc3_bh1": "UniPC-3 bh1",
    "unipc3_bh2": "UniPC-3 bh2",
    "unipc_bh2_full": "UniPC-2 bh2 (full-order last step)",
    "unipc3_bh2_full": "UniPC-3 bh2 (full-order last step)",
    "dpm_solver3": "DPM-Solver-3",
    "dpm_solver2": "DPM-Solver-2",
    "dpm_solver++": "DPM-Solver++(2M)",
    "edm": "EDM (Heun)",
}


def method_label(solver: str, method: str) -> str:
    """``DDIM`` / ``D-DDIM`` / ``D-DDIM-Sep``..., following the paper's names."""
    name = SOLVER_NAMES.get(solver, solver)
    return {
        "base": name,
        "d-ode": f"D-{name}",
        "d-ode-2": f"D-{name}-2",
        "sep": f"D-{name}-Sep",
        "all": f"D-{name}-All",
        "d-ode-joint": f"D-{name} (joint fit)",
        "fixed": f"Fixed-D-{name}",
        "lookahead": f"LA-{name}",
    }.get(method, f"{name} ({method})")


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``count(2, "seed")`` -> ``"2 seeds"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
