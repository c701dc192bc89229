"""Each notebook's parameters under each profile (``smoke`` | ``cpu`` | ``paper``).

A notebook's ``parameters`` cell leaves these at ``None``; :func:`dode.experiments.settings` fills them from
the table below, and any value given to papermill overrides it. The ``cpu`` column is sized so that the
whole book runs in about half an hour on two CPU cores (the embedded nets cost about 0.3 ms per sample and
network evaluation there): the main sweeps keep the protocol's 2,000 evaluation samples and 3 seeds and
trim the NFE grid; ``paper`` is the paper's protocol (50k samples, Inception FID, the paper's NFEs).
"""

from __future__ import annotations

__all__ = ["PROTOCOLS", "NOISE_SOLVERS"]

NOISE_SOLVERS = ["ddim", "ipndm", "dpm_solver3", "deis3"]

_SWEEP_SMOKE = dict(seeds=[0], K=2, B=8, n_samples=48, batch_size=48, device="cpu")
_SWEEP_CPU = dict(seeds=[0, 1, 2], K=10, B=100, n_samples=2000, batch_size=2000, device="cpu")
_SWEEP_PAPER = dict(seeds=[0, 1, 2], K=10, B=100, n_samples=50_000, batch_size=500, device="cuda")


def _sweep(models, solvers, nfes, methods=("base", "d-ode")):
    return {
        "smoke": dict(
            model=models[0], solvers=solvers, nfes=nfes["smoke"], methods=list(methods), **_SWEEP_SMOKE
        ),
        "cpu": dict(model=models[1], solvers=solvers, nfes=nfes["cpu"], methods=list(methods), **_SWEEP_CPU),
        "paper": dict(
            model=models[2], solvers=solvers, nfes=nfes["paper"], methods=list(methods), **_SWEEP_PAPER
        ),
    }


PROTOCOLS: dict[str, dict[str, dict]] = {
    # Fig. 3 / 10: noise prediction, FID (FD) vs NFE
    "02_noise_prediction": _sweep(
        ("digits-eps-mini", "digits-eps", "ddpm-cifar10"),
        NOISE_SOLVERS,
        {"smoke": [3, 5], "cpu": [5, 10], "paper": [2, 5, 10, 15, 20, 25, 50]},
    ),
    # Fig. 4: data prediction (EDM-preconditioned): DDIM in sigma and EDM's Heun sampler (odd NFE)
    "03_data_prediction": _sweep(
        ("digits-edm-mini", "digits-edm", "edm-cifar10-uncond-vp"),
        ["ddim", "edm"],
        {
            "smoke": {"ddim": [3, 5], "edm": [3, 5]},
            "cpu": {"ddim": [5, 10], "edm": [5, 9]},
            "paper": {"ddim": [2, 5, 10, 15, 25, 50], "edm": [3, 5, 7, 9, 15, 25, 35]},
        },
    ),
    # Fig. 9: DPM-Solver++(2M)
    "04_dpm_solver_pp": _sweep(
        ("digits-eps-mini", "digits-eps", "ddpm-cifar10"),
        ["dpm_solver++"],
        {"smoke": [3, 5], "cpu": [5, 10], "paper": [5, 10, 15, 20, 25, 50]},
    ),
    # Tab. 2: formulations of D-DDIM
    "07_formulations": _sweep(
        ("digits-eps-mini", "digits-eps", "ddpm-cifar10"),
        ["ddim"],
        {"smoke": [5], "cpu": [10], "paper": [10, 25, 50]},
        methods=("base", "sep", "all", "d-ode", "d-ode-2"),
    ),
    # Tab. 3: ablation of the teacher's scale K (at B = 100) and of the fitting batch size B (at K = 10).
    # cpu: NFE 10 only and 1,000 evaluation samples per cell (the 7 fits per seed and 8 sampling runs per
    # seed fit the notebook's ~3 minutes only so); 3 seeds, for the spread over fitting batches
    "08_ablation_K_B": {
        "smoke": dict(
            _SWEEP_SMOKE,
            model="digits-eps-mini",
            solvers=["ddim"],
            nfes=[5],
            methods=["base", "d-ode"],
            K_values=[2, 4],
            B_values=[4, 8],
        ),
        "cpu": dict(
            _SWEEP_CPU,
            model="digits-eps",
            solvers=["ddim"],
            nfes=[10],
            methods=["base", "d-ode"],
            K_values=[5, 10, 20, 30],
            B_values=[5, 10, 50, 100],
            n_samples=1000,
            batch_size=1000,
        ),
        "paper": dict(
            _SWEEP_PAPER,
            model="ddpm-cifar10",
            solvers=["ddim"],
            nfes=[10, 25, 50],
            methods=["base", "d-ode"],
            K_values=[5, 10, 20, 30],
            B_values=[5, 10, 50, 100],
        ),
    },
    # Tab. 4, Fig. 8b-c: Fixed-D-DDIM and LA-DDIM with one constant lambda from a grid search, against the
    # fitted D-DDIM. cpu: NFE 10 only, 2 seeds, a coarse grid (step 0.3) that brackets both optima on digits
    "09_lookahead_fixed": {
        "smoke": dict(
            _SWEEP_SMOKE,
            model="digits-eps-mini",
            solvers=["ddim"],
            nfes=[5],
            methods=["base", "d-ode", "fixed", "lookahead"],
            lambda_values=[0.5, 1.0],
        ),
        "cpu": dict(
            _SWEEP_CPU,
            model="digits-eps",
            solvers=["ddim"],
            nfes=[10],
            seeds=[0, 1],
            methods=["base", "d-ode", "fixed", "lookahead"],
            lambda_values=[0.3, 0.6, 0.9, 1.2],
        ),
        "paper": dict(
            _SWEEP_PAPER,
            model="ddpm-cifar10",
            solvers=["ddim"],
            nfes=[10, 25, 50],
            methods=["base", "d-ode", "fixed", "lookahead"],
            lambda_values=[0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5],
        ),
    },
}
