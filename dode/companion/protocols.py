"""Each notebook's parameters under each profile (``smoke`` | ``cpu`` | ``paper``).

A notebook's ``parameters`` cell leaves these at ``None``; :func:`dode.companion.experiments.settings` fills them from
the table below, and any value given to papermill overrides it. The ``cpu`` column is sized so that the
whole book runs in under half an hour on the slower of the project's two-core build machines, where one
evaluation of an embedded net costs 0.6-0.75 ms per sample on one thread (``benchmarks/throughput.py``) and
about 0.8 ms with the fits and the metric (the seconds recorded in the results files): the FID-against-NFE
sweeps (02, 03, 04) keep 3 seeds and five NFEs from 3 to 10, so that each panel is a curve, at 500
evaluation samples per cell as the other sweeps (at one or a few NFEs); page 00's noise floor at that count
says how small a difference the metric resolves there. A greedy fit costs about as much as one evaluation
run (the teacher's ``K * NFE`` steps on ``B = 100`` samples), so halving the samples from 1,000 halved the
sweeps' sampling and left their fits as they were. ``paper`` is the paper's protocol (50k samples, Inception FID, the paper's NFEs).
"""

from __future__ import annotations

__all__ = [
    "PROTOCOLS",
    "NOISE_SOLVERS",
    "LOF_SOLVERS",
    "NOISE_MODELS",
    "DATA_MODELS",
    "RUN_ENVIRONMENT",
    "network_evaluations",
    "metric_work",
    "FLOOR",
    "HEUN_STEPS",
    "SCALE_KEYS",
    "LEAVE_OUT",
    "UNSCALED",
    "check_scale",
    "scale_down",
]

NOISE_SOLVERS = ["ddim", "ipndm", "dpm_solver3", "deis3"]
#: iPNDM and DEIS-3 with the lower-order last steps (``lower_order_final``), beside the full-order ones on
#: page 02: a D-solver that only repairs a full-order last step is another finding than the paper's
LOF_SOLVERS = ["ipndm_lof", "deis3_lof"]
#: the paper's noise-prediction models (Fig. 3, 9, 10) and data-prediction models (Fig. 4), by zoo name
NOISE_MODELS = ["ddpm-cifar10", "ddim-celeba64", "adm-imagenet128", "adm-lsun-bedroom"]
DATA_MODELS = ["edm-cifar10-uncond-vp", "edm-ffhq-64", "edm-imagenet-64"]
#: the paper's fitting batch B = 100 "except for LSUN bedroom where a batch size of 25 is employed due to GPU
#: memory constraints"; the 256x256 U-Net also samples in smaller batches than the 32-128 ones
_PAPER_PER_MODEL = {"adm-lsun-bedroom": {"B": 25, "batch_size": 100}, "adm-imagenet128": {"batch_size": 250}}
#: where a run finds its files, the same in every notebook and profile (the paper run's configuration file,
#: notebooks/paper.example.yaml, sets them once for the whole book): model name -> options of
#: dode.zoo.load (checkpoint path, clone of the authors' code), and the folder of the FID statistics
RUN_ENVIRONMENT = dict(model_options={}, fid_stats=None)

#: the noise floor's reference samplers (dode.companion.experiments.noise_floor): DDIM's steps on VP models,
#: Heun's network evaluations on EDM models; {} = no floor. cpu: where more steps no longer move the FD beyond
#: its spread over seeds. Measured 2026-12-03 (paired: same evaluation noise): on digits-eps, DDIM with 200
#: steps scores 0.02 below 100 steps at 1,000 and 2,000 samples (seed 0), against a spread of 0.085 (std over
#: seeds 0-2) at 1,000 samples, while 50 steps score 0.06 above 100 at 2,000; on digits-edm, Heun with 79
#: evaluations scores 0.07-0.09 *above* EDM's usual 35 (seeds 0 and 1, both counts), more than the 35-step
#: floor's spread of 0.05 at 1,000 samples, while 159 evaluations move it by 0.01 only. So DDIM's 50 steps sit within the
#: floor's spread of 100 (more so at the sweeps' 500 samples, where the spread is larger) at half the cost;
#: Heun's 39 evaluations would not (they would be EDM's 35, apart from the 79 by more than the spread). Page 00 computes these floors once (at the sweeps' 500
#: samples, 3 seeds), the sweeps read them from the cache. smoke: cheap, only to exercise the code; paper: off, each floor costs 50k samples x the sampler's NFE x seeds per model (book/gpu.md)
FLOOR = {"smoke": {"ddim": 20, "edm": 9}, "cpu": {"ddim": 50, "edm": 79}, "paper": {}}

_SWEEP_SMOKE = dict(seeds=[0], K=2, B=8, n_samples=48, batch_size=48, device="cpu", floor=FLOOR["smoke"])
# cpu: the fitting batch is B = 50, not the paper's 100. A fit costs about K x B x NFE network evaluations,
# as much as the evaluation run of the cell at B = 100, and page 08 measures, in the same build, D-DDIM
# fitted on B = 50 against B = 100 at K = 10 (readings.ablation_reading says whether they differ beyond the
# spread over seeds; in the build of 2026-12-03 they did not, 0.01 FD apart); page 08 keeps the paper's
# default point B = 100 for its own ablation
_SWEEP_CPU = dict(
    seeds=[0, 1, 2], K=10, B=50, n_samples=500, batch_size=500, device="cpu", floor=FLOOR["cpu"]
)
_SWEEP_PAPER = dict(
    seeds=[0, 1, 2], K=10, B=100, n_samples=50_000, batch_size=500, device="cuda", floor=FLOOR["paper"]
)
# the cpu curves of 02, 03 and 04: five NFEs, so that each panel is a curve, up to NFE 10 where every solver
# is within a few tenths of FD of the noise floor (the sampling cost is n_samples * sum(NFEs) per method and
# seed: 29 here; NFE 20 would add 20 and show only the floor)
_CURVE_NFES = [3, 4, 5, 7, 10]
_CURVE_HEUN_NFES = [3, 5, 7, 9, 13]  # Heun: N steps cost 2N - 1 evaluations, so odd NFEs only


def _by_solver(full: list[int], lof: list[int]) -> dict[str, list[int]]:
    """NFEs per solver label of page 02: ``full`` for :data:`NOISE_SOLVERS`, ``lof`` for :data:`LOF_SOLVERS`."""
    return {**{label: list(full) for label in NOISE_SOLVERS}, **{label: list(lof) for label in LOF_SOLVERS}}


def _sweep(models, solvers, nfes, methods=("base", "d-ode"), key="model", per_model=None):
    """A quality sweep's three profiles; ``key="models"`` takes a list of models per profile (the results
    file then has a model dimension, and ``per_model`` gives the paper profile's per-model settings).
    Teachers are the paper's (Supp. 11): iPNDM and DEIS teach themselves, the other solvers are taught by
    DDIM."""
    tables = {"smoke": _SWEEP_SMOKE, "cpu": _SWEEP_CPU, "paper": _SWEEP_PAPER}
    out = {
        profile: {
            key: model,
            "solvers": solvers,
            "nfes": nfes[profile],
            "methods": list(methods),
            "teacher": "paper",
            **table,
        }
        for model, (profile, table) in zip(models, tables.items(), strict=True)
    }
    if key == "models":
        for profile in out:
            out[profile]["per_model"] = dict(per_model or {}) if profile == "paper" else {}
    return out


def _with_joint(protocol: dict, joint_nfes: dict) -> dict:
    """``protocol`` with each profile's ``joint_nfes``: the NFEs at which its joint-fit method runs
    (:func:`dode.companion.experiments.method_nfes`)."""
    return {profile: {**table, "joint_nfes": joint_nfes[profile]} for profile, table in protocol.items()}


_PD_CPU = dict(
    steps_start=8,
    steps_end=2,
    iterations_per_halving=150,
    batch_size=64,
    lr=3e-4,
    lr_schedule="linear",
    ema_decay=0.999,
    grad_clip=1.0,
    loss_weight="edm",
    seed=0,
)

# the test bed's mixture: 4 components in 8 dimensions (as in tests/conftest.py)
_GMM = dict(n_components=4, dim=8, seed=0)

# the peers page (dode.companion.peers): each diffusers peer's grid of documented options (the product of
# the values; the peer's own configuration, PEERS, among them) and dode's base samplers, the candidates of the
# tuning. UniPC bh1 keeps its final t = 0 (its step into sigma = 0 is NaN in diffusers 0.42)
_VP_PEER_GRIDS = {
    "unipc_bh2": {"lower_order_final": [True, False], "final_sigmas_type": ["zero", "sigma_min"]},
    "unipc_bh1": {"lower_order_final": [True, False]},
    "dpmpp_2m": {
        "solver_order": [2, 3],
        "use_karras_sigmas": [False, True],
        "lower_order_final": [True, False],
    },
    "deis": {"solver_order": [2, 3]},
    "ddim": {"timestep_spacing": ["trailing", "linspace"]},
}
_VP_BASES = [
    *[f"dode:dpm_solver++:{g}:base" for g in ("time_uniform", "logsnr_uniform", "gits")],
    *[f"dode:unipc_bh2:{g}:base" for g in ("time_uniform", "logsnr_uniform")],
    *[
        f"dode:{s}:time_uniform:base"
        for s in ("unipc_bh2_full", "deis2", "deis2_lof", "deis3_lof", "ipndm_lof", "ddim")
    ],
]
# On an EDM model: EDM's rho = 7 sigmas (karras) or uniform in log sigma (exponential)
_EDM_PEER_GRIDS = {
    "edm_euler": {"sigma_schedule": ["karras", "exponential"]},
    "edm_dpmpp_2m": {
        "solver_order": [2, 3],
        "sigma_schedule": ["karras", "exponential"],
        "lower_order_final": [True, False],
    },
    "heun_karras": {},
}
_EDM_BASES = [
    *[f"dode:dpm_solver++:{g}:base" for g in ("edm", "logsnr_uniform", "gits")],
    *[f"dode:unipc_bh2:{g}:base" for g in ("edm", "logsnr_uniform")],
    *[f"dode:{s}:edm:base" for s in ("edm", "ddim", "deis2_lof", "ipndm_lof")],
]

_TRAJ = dict(
    solvers=["ddim"], methods=["base", "d-ode", "d-ode-2", "sep", "all"], n_pixels=6, seed=0, device="cpu"
)

#: page 03's measurement of base Heun's error step by step (:func:`dode.companion.anomalies.measure_heun_steps`):
#: ``n`` fixed evaluation noises of the first seed, a reference with ``K`` Heun sub-steps in each interval of
#: the union of the plans' sigmas, at the file's Heun NFEs up to ``max_nfe`` (None: all). Each step's error is
#: carried to sigma = 0 by the reference, about a full reference run per step: 80 noises cost ~45 s on the
#: cpu profile; the paper's models stop at NFE 15 (the union of longer plans' sigmas grows every run)
HEUN_STEPS = {
    "smoke": {"n": 8, "K": 2, "max_nfe": None},
    "cpu": {"n": 80, "K": 4, "max_nfe": None},
    "paper": {"n": 64, "K": 4, "max_nfe": 15},
}

PROTOCOLS: dict[str, dict[str, dict]] = {
    # Fig. 3 / 10: noise prediction, FID (FD) vs NFE
    "02_noise_prediction": _with_joint(
        _sweep(
            (["digits-eps-mini"], ["digits-eps"], NOISE_MODELS),
            NOISE_SOLVERS + LOF_SOLVERS,
            # the lower-order-final variants where their last steps differ from the full-order ones and the
            # full-order last step costs most: small NFEs (from 15 steps on the two are the same solver; at
            # NFE 2 both are DDIM). cpu: every NFE of the curve, so that each rise of a full-order curve (NFE 4
            # and 7 in the cpu build of 2026-12-04) is measured against the lower-order last step
            {
                "smoke": _by_solver([3, 5], [3, 5]),
                "cpu": _by_solver(_CURVE_NFES, _CURVE_NFES),
                "paper": _by_solver([2, 5, 10, 15, 20, 25, 50], [5, 10]),
            },
            methods=("base", "d-ode", "d-ode-joint"),
            key="models",
            per_model=_PAPER_PER_MODEL,
        ),
        # the joint fit (dode.joint) beside the greedy one, all seeds, at the NFEs it is affordable at: 3-9
        # Levenberg-Marquardt iterations of NFE + 1 sampling runs of the fitting batch each, against one run for
        # the greedy fit. cpu: DPM-Solver-3 at NFE 5 only, the cell where the greedy fit leaves the D-solver
        # worse than its base (the finding joint_verdict; its three fits cost about 90 s in the cpu build of
        # 2026-12-03, the twelve of all four solvers 245 s; page 12 runs the joint fit of every solver at more
        # NFEs on the exact test bed). smoke: NFE 3 only, so that the smoke book checks the empty cells at
        # NFE 5. paper: the four solvers at NFE 2, 5 and 10 -- at NFE 10 about 70-110 runs of 100 samples per
        # fit (as on digits), i.e. 7,000-11,000 samples at 10 NFE, a fifth of the 50k-sample evaluation run of
        # the same cell (an estimate: not measured on a GPU)
        {
            "smoke": _by_solver([3], []),
            "cpu": {**_by_solver([], []), "dpm_solver3": [5]},
            "paper": _by_solver([2, 5, 10], []),
        },
    ),
    # Fig. 4: data prediction (EDM-preconditioned): DDIM in sigma and EDM's Heun sampler (odd NFE)
    "03_data_prediction": _sweep(
        (["digits-edm-mini"], ["digits-edm"], DATA_MODELS),
        ["ddim", "edm"],
        {
            "smoke": {"ddim": [3, 5], "edm": [3, 5]},
            "cpu": {"ddim": _CURVE_NFES, "edm": _CURVE_HEUN_NFES},
            "paper": {"ddim": [2, 5, 10, 15, 25, 50], "edm": [3, 5, 7, 9, 15, 25, 35]},
        },
        # the paper's lambda on every stage beside our default (one per landing time): they differ for Heun
        methods=("base", "d-ode", "d-ode-per-stage"),
        key="models",
    ),
    # Fig. 9: DPM-Solver++(2M). The paper's text does not say which models Fig. 9 shows; DPM-Solver++ is a
    # solver of the noise-prediction section, so the paper profile runs the models of Fig. 3
    "04_dpm_solver_pp": _sweep(
        (["digits-eps-mini"], ["digits-eps"], NOISE_MODELS),
        ["dpm_solver++"],
        {"smoke": [3, 5], "cpu": _CURVE_NFES, "paper": [5, 10, 15, 20, 25, 50]},
        key="models",
        per_model=_PAPER_PER_MODEL,
    ),
    # Tab. 2: formulations of D-DDIM
    "07_formulations": _sweep(
        ("digits-eps-mini", "digits-eps", "ddpm-cifar10"),
        ["ddim"],
        {"smoke": [5], "cpu": [10], "paper": [10, 25, 50]},
        methods=("base", "sep", "all", "d-ode", "d-ode-2"),
    ),
    # Tab. 3: ablation of the teacher's scale K (at B = 100) and of the fitting batch size B (at K = 10).
    # cpu: NFE 10 only, the sweeps' 500 evaluation samples per cell (6 fits and 7 sampling runs per seed);
    # 3 seeds, for the spread over fitting batches; K up to 20 (K = 30's teacher, 300 steps on each fitting
    # batch, cost 85 s of the build)
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
            B=100,  # the paper's default point of Tab. 3
            K_values=[5, 10, 20],
            B_values=[5, 10, 50, 100],
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
    # fitted D-DDIM. The constant is chosen on ``tuning_seed`` (its own evaluation noise and fitting batch,
    # never the evaluation seeds'), and the methods are compared on ``seeds`` at the chosen constant
    # (dode.companion.plots.best_constant). cpu: NFE 10 only, a coarse grid (step 0.3): on the evaluation
    # seeds of the 2026-12-03 build LA-DDIM's curve has its minimum inside it (0.6) and Fixed-D-DDIM's is flat
    # from 0.9 to its edge at 1.2 (the page flags a choice at an edge)
    "09_lookahead_fixed": {
        "smoke": dict(
            _SWEEP_SMOKE,
            model="digits-eps-mini",
            solvers=["ddim"],
            nfes=[5],
            tuning_seed=1,
            methods=["base", "d-ode", "fixed", "lookahead"],
            lambda_values=[0.5, 1.0],
        ),
        "cpu": dict(
            _SWEEP_CPU,
            model="digits-eps",
            solvers=["ddim"],
            nfes=[10],
            tuning_seed=3,
            methods=["base", "d-ode", "fixed", "lookahead"],
            lambda_values=[0.3, 0.6, 0.9, 1.2],
        ),
        "paper": dict(
            _SWEEP_PAPER,
            model="ddpm-cifar10",
            solvers=["ddim"],
            nfes=[10, 25, 50],
            tuning_seed=3,
            methods=["base", "d-ode", "fixed", "lookahead"],
            lambda_values=[0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5],
        ),
    },
    # Fig. 2: cosine similarity between all denoising outputs of one long DDIM run (Euler in sigma on EDM
    # models), a noise-prediction and a data-prediction model side by side
    "01_denoiser_correlation": {
        "smoke": dict(
            models=["digits-eps-mini", "digits-edm-mini"], steps=30, n_samples=8, seed=0, device="cpu"
        ),
        "cpu": dict(models=["digits-eps", "digits-edm"], steps=1000, n_samples=16, seed=0, device="cpu"),
        "paper": dict(
            models=["ddpm-cifar10", "edm-cifar10-uncond-vp"], steps=1000, n_samples=32, seed=0, device="cuda"
        ),
    },
    # Fig. 5, 7, 11: norm of x_t and random pixels along base / D-ODE runs vs a 1000-step DDIM on the same noise
    "05_trajectories": {
        "smoke": dict(model="digits-eps-mini", nfes=[5], reference_steps=30, n_samples=8, K=2, B=8, **_TRAJ),
        "cpu": dict(model="digits-eps", nfes=[10], reference_steps=1000, n_samples=24, K=10, B=100, **_TRAJ),
        "paper": dict(
            model="ddpm-cifar10", nfes=[10], reference_steps=1000, n_samples=32, K=10, B=100, **_TRAJ
        )
        | {"device": "cuda"},
    },
    # Fig. 6, 12-15: sample grids from the same noise, base vs D-solver; DDIM on both models, Heun on EDM
    "06_samples": {
        "smoke": dict(
            panels=[["digits-eps-mini", "ddim"], ["digits-edm-mini", "ddim"], ["digits-edm-mini", "edm"]],
            nfes={"ddim": [3, 5], "edm": [3, 5]},
            n_samples=8,
            reference_steps=20,
            seed=0,
            K=2,
            B=8,
            device="cpu",
        ),
        "cpu": dict(
            panels=[["digits-eps", "ddim"], ["digits-edm", "ddim"], ["digits-edm", "edm"]],
            nfes={"ddim": [5, 10], "edm": [5, 9]},
            n_samples=16,
            reference_steps=200,
            seed=0,
            K=10,
            B=100,
            device="cpu",
        ),
        # Fig. 6: ImageNet 64 and FFHQ 64 (EDM's data-prediction models), DDIM and EDM's Heun sampler
        "paper": dict(
            panels=[
                ["edm-imagenet-64", "ddim"],
                ["edm-imagenet-64", "edm"],
                ["edm-ffhq-64", "ddim"],
                ["edm-ffhq-64", "edm"],
            ],
            nfes={"ddim": [5, 10, 25], "edm": [5, 9, 15]},
            n_samples=16,
            reference_steps=1000,
            seed=0,
            K=10,
            B=100,
            device="cuda",
        ),
    },
    # Beyond the paper: the exact Gaussian-mixture test bed (dode.companion.testbed), distance to the exact
    # ODE solution of base, greedy-D and joint-D solvers, taught by DDIM and by themselves. cpu: about a minute
    # (NFE 20 would double it: the joint fit's cost grows with the square of the NFE)
    "12_exact_testbed": {
        "smoke": dict(
            schedules=["vp"], solvers=["ddim", "ipndm"], nfes=[4], K=2, B=16, n_fresh=32, gmm=_GMM, seed=0
        ),
        "cpu": dict(
            schedules=["vp"],
            solvers=["ddim", "ipndm", "deis3", "dpm_solver3", "dpm_solver++"],
            nfes=[3, 5, 8, 12],
            K=10,
            B=100,
            n_fresh=500,
            gmm=_GMM,
            seed=0,
        ),
        "paper": dict(
            schedules=["vp", "edm"],
            solvers=["ddim", "ipndm", "deis3", "dpm_solver3", "dpm_solver++"],
            nfes=[3, 5, 7, 9, 12, 15, 20, 25],
            K=10,
            B=100,
            n_fresh=2000,
            gmm=_GMM,
            seed=0,
        ),
    },
    # Beyond the paper: every sampler at its best (dode.companion.peers): diffusers' schedulers tuned over a
    # small grid of their documented options, dode's base solvers over grids and last-step orders, and the
    # D-solvers of the best bases, each chosen per NFE on tuning noise (seed 1000, never evaluated on), then the
    # winners (and the tuned peer's own configuration) evaluated on the book's noise, seeds 0, 1, 2. cpu cost
    # (peers.estimate_evaluations, an upper bound, ~0.8 ms per sample evaluation on one thread): in the cpu
    # book of 2026-12-03 with 128 tuning samples, B = 100 and GITS's fine-grid costs once per model and seed
    # (1,096 s of wall time beside page 02) the stages took tuning 379 s, the other seeds' fits 185 s, GITS
    # 107 s, evaluation 297 s; with this table (64 tuning samples: its FD is noisier, and a peer's own
    # configuration is evaluated beside the tuned one, so a worse pick cannot favour dode; B = 50; GITS's
    # costs once per model, as GITS fits a model's grid once) tuning 205 s, fits 73 s, GITS 28 s, evaluation
    # 290 s (755 s of wall time). d_top 1 would save a little more, but the 2nd base's D-solver won cells.
    # The noise floor at 500 samples is read from pages 02 and 03's cache where they ran first. No joint
    # fit here (tens of greedy fits each): pages 02 and 12 compare it
    "13_peers": {
        "smoke": dict(
            models=["digits-eps-mini", "digits-edm-mini"],
            peer_grids={
                "digits-eps-mini": {"unipc_bh2": {"lower_order_final": [True, False]}, "dpmpp_2m": {}},
                "digits-edm-mini": {"edm_dpmpp_2m": {"sigma_schedule": ["karras", "exponential"]}},
            },
            bases={
                "digits-eps-mini": ["dode:dpm_solver++:time_uniform:base", "dode:ddim:time_uniform:base"],
                "digits-edm-mini": ["dode:edm:edm:base", "dode:dpm_solver++:logsnr_uniform:base"],
            },
            nfes={"digits-eps-mini": [3], "digits-edm-mini": [3]},
            d_top=1,
            seeds=[0, 1],
            tuning_seed=1000,
            tuning_samples=32,
            K=2,
            B=8,
            n_samples=48,
            batch_size=48,
            device="cpu",
            floor=FLOOR["smoke"],
        ),
        "cpu": dict(
            models=["digits-eps", "digits-edm"],
            peer_grids={"digits-eps": _VP_PEER_GRIDS, "digits-edm": _EDM_PEER_GRIDS},
            bases={"digits-eps": _VP_BASES, "digits-edm": _EDM_BASES},
            nfes=[3, 4, 5, 6, 8, 10],
            d_top=2,
            seeds=[0, 1, 2],
            tuning_seed=1000,
            tuning_samples=64,
            K=10,
            B=50,  # as the cpu sweeps (_SWEEP_CPU)
            n_samples=500,
            batch_size=500,
            device="cpu",
            floor=FLOOR["cpu"],
        ),
        "paper": dict(
            models=["ddpm-cifar10", "edm-cifar10-uncond-vp"],
            peer_grids={"ddpm-cifar10": _VP_PEER_GRIDS, "edm-cifar10-uncond-vp": _EDM_PEER_GRIDS},
            bases={"ddpm-cifar10": _VP_BASES, "edm-cifar10-uncond-vp": _EDM_BASES},
            nfes=[3, 4, 5, 6, 8, 10],
            d_top=2,
            seeds=[0, 1, 2],
            tuning_seed=1000,
            tuning_samples=5_000,
            K=10,
            B=100,
            n_samples=50_000,
            batch_size=500,
            device="cuda",
            floor=FLOOR["paper"],
        ),
    },
    # Tab. 1 / Fig. 8a: the cost of D-ODE fits against progressive distillation (dode.companion.timing). PD recipes:
    # paper = Salimans & Ho's released CIFAR-10 configuration (8192 -> 1 steps there, stopped at 2 here as
    # D-EDM needs 2 steps; 50k Adam steps of batch 128 per halving, lr 5e-5 annealed linearly to 0, no EMA,
    # grad clip 1, loss weight max(SNR, 1)); cpu = a few minutes in all: 2 halvings of 150 steps.
    "10_timing": {
        "smoke": dict(
            model="digits-edm-mini",
            nfes={"edm": [3], "ddim": [2]},
            seeds=[0],
            K=2,
            B=8,
            n_samples=48,
            batch_size=48,
            device="cpu",
            floor=FLOOR["smoke"],
            threads=1,  # tiny batches: thread-pool overhead dominates on a shared 2-core machine
            overhead=dict(n_samples=48, repeats=3),
            pd=dict(_PD_CPU, steps_start=4, iterations_per_halving=3, batch_size=16),
            pd_data=None,
            pd_eval_steps=None,
        ),
        "cpu": dict(
            model="digits-edm",
            nfes={"edm": [5, 7, 9], "ddim": [2, 4, 8]},
            seeds=[0],
            K=10,
            B=100,
            n_samples=500,
            batch_size=500,
            device="cpu",
            floor=FLOOR["cpu"],
            # one thread: on the shared 2-core build machine (load average ~6) two threads made a PD training
            # step 9x slower (7.7 s vs 0.83 s at batch 64), the threads waiting on each other
            threads=1,
            # the D-solver's sampling overhead: base and D interleaved on one batch, 7 paired repeats at each
            # NFE (2 x 7 x 200 x 35 evaluations, about 30 s)
            overhead=dict(n_samples=200, repeats=7),
            pd=dict(_PD_CPU),
            pd_data=None,
            pd_eval_steps=None,
        ),
        "paper": dict(
            model="edm-cifar10-uncond-vp",
            nfes={"edm": [3, 5, 7, 9, 15, 25, 35], "ddim": [2, 4, 8, 16, 32]},
            seeds=[0, 1, 2],
            K=10,
            B=100,
            n_samples=50_000,
            batch_size=500,
            device="cuda",
            floor=FLOOR["paper"],
            threads=0,
            overhead=dict(n_samples=500, repeats=9),
            pd=dict(
                steps_start=8192,
                steps_end=2,
                iterations_per_halving=50_000,
                batch_size=128,
                lr=5e-5,
                lr_schedule="linear",
                ema_decay=0.0,
                grad_clip=1.0,
                loss_weight="snr_trunc",
                seed=0,
                checkpoint_every=5000,
            ),
            pd_data=None,  # required: CIFAR-10's training images as .npy (N, 32, 32, 3) uint8
            pd_eval_steps=[2, 4, 8, 16, 32],
        ),
    },
}


# every notebook's every profile finds its files the same way
for _profiles in PROTOCOLS.values():
    for _table in _profiles.values():
        for _name, _default in RUN_ENVIRONMENT.items():
            _table.setdefault(_name, _default)


def network_evaluations(stem: str, profile: str) -> int:
    """Network evaluations of one sweep notebook under ``profile``: every model and (solver, NFE, seed, method) samples
    ``n_samples`` in NFE evaluations, and the D-variants of a (solver, NFE, seed) are fitted on ``B`` noises
    against one shared teacher run (``K * NFE`` evaluations) plus one student run (``NFE``) per variant. A
    joint fit (``d-ode-joint``, only at the sweep's ``joint_nfes``) re-runs the sampler on the fitting
    batch: counted as ``max_iter * (P + 1) + 2`` runs (``P`` = NFE lambdas, few rejected steps), an upper
    bound (its ``tol`` usually stops it after 3-9 iterations, book/method.md). Where the sweep's ``floor`` is
    on, the noise floor's reference sampler samples ``n_samples`` of every seed once more (an upper bound too:
    a floor another notebook computed is read from its cache). What a GPU box's run time scales with."""
    from dode.companion.experiments import JOINT_METHODS, solver_spec
    from dode.joint import JOINT_DEFAULTS
    from dode.schedules import EDMSchedule
    from dode.solvers import make_plan

    cells = list(_sweep_cells(stem, profile))  # first: it checks the stem
    cfg = PROTOCOLS[stem][profile]
    total = 0
    for own, floor_steps, label, nfe, methods in cells:
        if label is None:  # the noise floor's reference run of every seed
            total += floor_steps * own["n_samples"] * len(cfg["seeds"])
            continue
        fitted = sum(m != "base" for m in methods)
        solver, options = solver_spec(label)
        # the teacher refines each distinct landing time K-fold (Heun's two stages share one)
        landing = len(set(make_plan(EDMSchedule(), solver, nfe, None, options).landing_times))
        sampling = len(methods) * own["n_samples"] * nfe
        fitting = (own["B"] * own["K"] * landing + fitted * own["B"] * nfe) if fitted else 0
        joint_runs = JOINT_DEFAULTS["max_iter"] * (nfe + 1) + 2
        fitting += sum(m in JOINT_METHODS for m in methods) * joint_runs * own["B"] * nfe
        total += (sampling + fitting) * len(cfg["seeds"])
    return total


def metric_work(stem: str, profile: str) -> dict[str, int]:
    """What the metric of one sweep notebook costs under ``profile``, beside :func:`network_evaluations`:
    ``images``, the samples whose features (Inception's, for FID) are computed, ``n_samples`` per model,
    (solver, NFE, seed, method) and noise-floor seed; and ``distances``, the Frechet distances computed, one
    per such cell (on rank 0, :func:`dode.metrics.frechet_distance`)."""
    cells = list(_sweep_cells(stem, profile))  # first: it checks the stem
    cfg = PROTOCOLS[stem][profile]
    images = distances = 0
    for own, _, _, _, methods in cells:
        cells = len(methods or [None]) * len(cfg["seeds"])  # a floor's run (methods None): one per seed
        images += cells * own["n_samples"]
        distances += cells
    return {"images": images, "distances": distances}


def _sweep_cells(stem: str, profile: str):
    """``(model settings, floor steps, solver, nfe, methods)`` for every (model, solver, NFE) of a plain
    sweep, with the methods computed there; a model's noise floor, where on, as ``(settings, steps, None,
    None, None)``."""
    if stem not in PROTOCOLS:
        raise ValueError(f"stem must be one of {sorted(PROTOCOLS)}, got {stem!r}")
    cfg = PROTOCOLS[stem][profile]
    if not _plain_sweep(cfg):
        raise ValueError(
            f"{stem} is not a plain sweep over solvers and NFEs; the costs are counted for those only "
            f"({', '.join(s for s, p in PROTOCOLS.items() if _plain_sweep(p[profile]))})"
        )
    from dode import zoo
    from dode.companion.experiments import check_floor, method_nfes, model_settings, same_as_per_time

    nfes = cfg["nfes"]
    floor = check_floor(cfg.get("floor"))
    for model in cfg["models"] if "models" in cfg else [cfg["model"]]:
        own = model_settings(cfg, model)
        if floor:
            reference = "edm" if zoo.available()[model]["schedule"].startswith("edm") else "ddim"
            yield own, floor[reference], None, None, None
        for label in cfg["solvers"]:
            for nfe in nfes[label] if isinstance(nfes, dict) else nfes:
                methods = [
                    m
                    for m in cfg["methods"]
                    if not same_as_per_time(m, label, nfe)
                    and nfe in method_nfes(m, label, nfes, cfg.get("joint_nfes"))
                ]
                yield own, None, label, nfe, methods


def _plain_sweep(cfg: dict) -> bool:
    needed = ("solvers", "nfes", "methods", "seeds", "n_samples", "K", "B")
    return all(k in cfg for k in needed) and not any(
        k in cfg for k in ("K_values", "B_values", "lambda_values")
    )


# ---- the dry run: every notebook's protocol scaled down (python -m dode.dry_run, book/gpu.md) ----

#: what a scale file (notebooks/dry_run.yaml) may set, each a cap on a notebook's parameters whatever their
#: shape (a list of NFEs, one per solver, per model or per panel), and what it caps
SCALE_KEYS = {
    "n_samples": "evaluation samples per cell, images or trajectories per figure, fresh noises of page 12",
    "B": "fitting batch sizes (B, B_values, a model's own B)",
    "seeds": "seeds kept (the first ones)",
    "nfes": "NFEs kept per solver, model or panel (the smallest ones); a joint fit keeps those among them",
    "grid": "values kept of a searched grid (K_values, B_values, lambda_values)",
    "steps": "steps of the long reference runs (page 01's run, pages 05 and 06's reference)",
    "repeats": "repeats of page 10's paired overhead measurement",
    "pd_steps": "the teacher's steps of progressive distillation (page 10; at least one halving is kept)",
    "pd_iterations": "training steps per halving of progressive distillation (page 10)",
}
#: besides the caps: models left out of the notebooks that run several (e.g. the 256x256 ones on a small GPU)
LEAVE_OUT = "leave_out"

#: the parameters a scale caps, by notebook parameter; every size parameter of every notebook is among them
#: or declared unscaled here (tests/test_dry_run.py checks both), so that no notebook runs its full protocol
#: in a dry run
_SCALED = {
    "n_samples",
    "batch_size",
    "n_fresh",
    "overhead",
    "B",
    "B_values",
    "K_values",
    "lambda_values",
    "seeds",
    "nfes",
    "joint_nfes",
    "steps",
    "reference_steps",
    "pd",
    "pd_eval_steps",
    "per_model",
    "models",
    "model",
    "panels",
    "samplers",
    "peer_grids",
    "bases",
    "tuning_samples",
    "d_top",
}
#: parameters that set no size of a run (or a size that does not grow its cost: one seed, a tuning seed, the teacher's
#: scale K, a handful of tracked pixels), kept as given
UNSCALED = {
    "profile",
    "solvers",
    "methods",
    "schedules",
    "K",
    "seed",
    "tuning_seed",
    "n_pixels",
    "gmm",
    "device",
    "floor",
    "threads",
    "teacher",
    "pd_data",
    "model_options",
    "fid_stats",
    "results_dir",
    "figures_dir",
    "nproc",
    "retrain",
}


def check_scale(scale: dict) -> dict:
    """A scale mapping (:data:`SCALE_KEYS`, each a positive integer, and :data:`LEAVE_OUT`, a list of model
    names), checked; raises ``ValueError`` naming the key and the allowed values."""
    if not isinstance(scale, dict):
        raise ValueError(f"a scale must be a mapping of {sorted(SCALE_KEYS)} to caps, got {scale!r}")
    unknown = sorted(set(scale) - set(SCALE_KEYS) - {LEAVE_OUT})
    if unknown:
        raise ValueError(f"scale sets {unknown}; it may set {sorted(SCALE_KEYS)} and {LEAVE_OUT!r}")
    missing = sorted(set(SCALE_KEYS) - set(scale))
    if missing:
        raise ValueError(f"scale must set every cap, {sorted(SCALE_KEYS)}; missing {missing}")
    for key in SCALE_KEYS:
        value = scale[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"scale {key} ({SCALE_KEYS[key]}) must be a positive integer, got {value!r}")
    leave_out = scale.get(LEAVE_OUT) or []
    if not isinstance(leave_out, list) or not all(isinstance(m, str) for m in leave_out):
        raise ValueError(f"scale {LEAVE_OUT} must be a list of dode.zoo model names, got {leave_out!r}")
    return {**scale, LEAVE_OUT: list(leave_out)}


def _smallest(values, n: int) -> list:
    return sorted(values)[:n]


def _nfes_down(nfes, n: int):
    """``nfes`` in any of the notebooks' shapes (a list; a mapping solver, model or panel -> list) with the
    ``n`` smallest NFEs of each list."""
    if isinstance(nfes, dict):
        return {key: _smallest(values, n) for key, values in nfes.items()}
    return _smallest(nfes, n)


def _joint_down(joint_nfes, kept):
    """The joint fits' NFEs among the NFEs kept (``kept`` in the shape of ``nfes``): where none is left the
    run has no joint cells, which the pages draw without."""
    everywhere = sorted({n for v in kept.values() for n in v}) if isinstance(kept, dict) else list(kept)
    if isinstance(joint_nfes, dict):
        return {
            label: [n for n in values if n in (kept.get(label, []) if isinstance(kept, dict) else kept)]
            for label, values in joint_nfes.items()
        }
    return [n for n in joint_nfes if n in everywhere]


def _models_of(parameters: dict) -> list[str]:
    if "models" in parameters:
        return list(parameters["models"])
    if "model" in parameters:
        return [parameters["model"]]
    return list(dict.fromkeys(p[0] for p in parameters.get("panels") or []))


def scale_down(stem: str, parameters: dict, scale: dict) -> dict:
    """Notebook ``stem``'s resolved ``parameters`` (its protocol's, with a run's configuration file over them)
    scaled down by ``scale`` (:func:`check_scale`): every size parameter capped, whatever its shape, so that
    a configuration file meant for the full protocol cannot start it. A parameter that neither
    :data:`SCALE_KEYS` caps nor :data:`UNSCALED` names is an error: a new size parameter must say how a
    dry run shrinks it. Models of ``scale["leave_out"]`` are left out where the notebook runs several; a
    notebook left with none is an error that names it."""
    scale = check_scale(scale)
    unknown = sorted(set(parameters) - _SCALED - UNSCALED)
    if unknown:
        raise ValueError(
            f"{stem}: parameter(s) {unknown} have no rule in dode.companion.protocols.scale_down; add one "
            "(or name them in UNSCALED) so that a dry run cannot run them at full size"
        )
    out = dict(parameters)
    leave_out = set(scale[LEAVE_OUT])
    models = [m for m in _models_of(out) if m not in leave_out]
    if _models_of(out) and not models:
        raise ValueError(
            f"{stem}: scale {LEAVE_OUT} leaves out every model of the notebook ({_models_of(parameters)}); "
            "keep one of them"
        )
    if "models" in out:
        out["models"] = models
    if "panels" in out:
        out["panels"] = [list(p) for p in out["panels"] if p[0] not in leave_out]
    for name in ("samplers", "per_model", "peer_grids", "bases"):
        if isinstance(out.get(name), dict):
            out[name] = {m: v for m, v in out[name].items() if m not in leave_out}
    if isinstance(out.get("nfes"), dict) and set(out["nfes"]) & leave_out:
        out["nfes"] = {k: v for k, v in out["nfes"].items() if k not in leave_out}
    if out.get("nfes") is not None:
        out["nfes"] = _nfes_down(out["nfes"], scale["nfes"])
        if out.get("joint_nfes") is not None:
            out["joint_nfes"] = _joint_down(out["joint_nfes"], out["nfes"])
    if out.get("seeds") is not None:
        out["seeds"] = list(out["seeds"])[: scale["seeds"]]
    if out.get("d_top") is not None:
        out["d_top"] = min(int(out["d_top"]), scale["grid"])
    for name in ("n_samples", "n_fresh", "tuning_samples"):
        if out.get(name) is not None:
            out[name] = min(int(out[name]), scale["n_samples"])
    if out.get("batch_size") is not None:
        out["batch_size"] = min(int(out["batch_size"]), scale["n_samples"])
    if out.get("B") is not None:
        out["B"] = min(int(out["B"]), scale["B"])
    if out.get("per_model"):
        out["per_model"] = {m: _per_model_down(own, scale) for m, own in out["per_model"].items()}
    if out.get("K_values"):
        out["K_values"] = list(out["K_values"])[: scale["grid"]]
    if out.get("B_values"):
        capped = dict.fromkeys(min(int(b), scale["B"]) for b in out["B_values"])
        out["B_values"] = list(capped)[: scale["grid"]]
    if out.get("lambda_values"):
        out["lambda_values"] = list(out["lambda_values"])[: scale["grid"]]
    for name in ("steps", "reference_steps"):
        if out.get(name) is not None:
            out[name] = min(int(out[name]), scale["steps"])
    if out.get("overhead"):
        out["overhead"] = {
            "n_samples": min(int(out["overhead"]["n_samples"]), scale["n_samples"]),
            "repeats": min(int(out["overhead"]["repeats"]), scale["repeats"]),
        }
    if out.get("pd"):
        out["pd"], out["pd_eval_steps"] = _pd_down(out["pd"], out.get("pd_eval_steps"), scale)
    return out


def _per_model_down(own: dict, scale: dict) -> dict:
    caps = {"n_samples": scale["n_samples"], "batch_size": scale["n_samples"], "B": scale["B"]}
    return {k: min(int(v), caps[k]) if k in caps else v for k, v in (own or {}).items()}


def _pd_down(recipe: dict, eval_steps, scale: dict) -> tuple[dict, list[int] | None]:
    """Progressive distillation from at most ``pd_steps`` teacher steps (but one halving at least, down to
    the recipe's ``steps_end``), ``pd_iterations`` training steps per halving on batches of at most ``B``, and the scored students among
    those left."""
    recipe = dict(recipe)
    start = int(recipe["steps_start"])
    while start > scale["pd_steps"] and start // 2 >= 2 * int(recipe["steps_end"]):
        start //= 2
    recipe["steps_start"] = start
    recipe["iterations_per_halving"] = min(int(recipe["iterations_per_halving"]), scale["pd_iterations"])
    # its training batch is a fitting batch too: a user's pd_data of a few images must hold one
    recipe["batch_size"] = min(int(recipe["batch_size"]), scale["B"])
    recipe.pop("checkpoint_every", None)  # a checkpoint every N of a handful of steps: none needed
    if eval_steps is not None:
        eval_steps = [s for s in eval_steps if s < start] or None
    return recipe, eval_steps
