"""The paper's own numbers, for side-by-side comparison (method chapter, section 6; CIFAR-10, noise prediction,
FID over 50k samples, mean of 3 seeds). Values that the paper's text lost in extraction (Tab. 1's times,
Tab. 3's ablation) are not invented here."""

from __future__ import annotations

__all__ = ["TABLE2", "TABLE4", "NFES", "SWEEP_FIDS", "SWEEP_MODEL", "CLAIMS", "CLAIM_SOURCES"]

NFES = (10, 25, 50)

#: Tab. 2 -- formulations of D-DDIM (FID, CIFAR-10, DDPM noise-prediction model)
TABLE2 = {
    "DDIM": (18.85, 9.79, 7.17),
    "D-DDIM-Sep": (79.21, 26.40, 11.50),
    "D-DDIM-All": (179.67, 36.65, 18.48),
    "D-DDIM": (8.67, 8.18, 6.55),
    "D-DDIM-2": (18.75, 9.83, 7.21),
}

#: Tab. 4 -- lookahead and fixed-lambda variants (FID at NFE 10, 25, 50)
TABLE4 = {
    "DDIM": (18.85, 9.79, 7.17),
    "D-DDIM": (8.67, 8.18, 6.55),
    "Fixed-D-DDIM (grid search)": (11.45, 7.00, 5.27),
    "LA-DDIM": (15.24, 8.57, 6.29),
}

#: the paper's FIDs beside a sweep's cells: (solver label, method) -> values at NFES. Only DDIM on the DDPM
#: noise-prediction model has published numbers at fixed NFEs (Tab. 2); the curves of Fig. 3, 4, 9 are plots.
SWEEP_FIDS = {("ddim", "base"): TABLE2["DDIM"], ("ddim", "d-ode"): TABLE2["D-DDIM"]}
#: the model those numbers were measured on (dode.zoo name): a page shows them beside its rows only
SWEEP_MODEL = "ddpm-cifar10"

#: the paper's qualitative claims that the companion checks, keyed by a short id
CLAIMS = {
    "d_beats_base": "D-solvers beat their base solvers for NFE >= 5, and the gap closes as NFE grows (Fig. 3, 4)",
    "formulations": "D-DDIM beats D-DDIM-Sep, -All and -2, which do not improve on DDIM (Tab. 2)",
    "ablation_K": "FID improves with K (Tab. 3a)",
    "ablation_B": "FID and its spread over seeds shrink with B (Tab. 3b)",
    "correlation": "denoising outputs of neighbouring steps have cosine similarity near 1 (Fig. 2)",
    "trajectories": "D-solvers' pixel trajectories stay closer to a 1000-step DDIM (Fig. 5)",
    "lookahead": "D-DDIM beats LA-DDIM except at NFE 50; Fixed-D-DDIM can match it with a grid search (Tab. 4)",
    "cost": "distillation costs minutes, where progressive or consistency distillation costs GPU-days to reach "
    "the same FID (Tab. 1)",
    "dpm3_stability": "D-DPM-Solver3 effectively alleviates the instability associated with multi-step approaches "
    "at extremely small NFE values, surpassing the performance of DPM-Solver3 by a significant margin (Fig. 3)",
}

#: where the paper shows each claim, and its number where it gives one (CIFAR-10 FID, NFE 10)
CLAIM_SOURCES = {
    "d_beats_base": ("Fig. 3, 4, 9", f"DDIM {TABLE2['DDIM'][0]} → D-DDIM {TABLE2['D-DDIM'][0]}"),
    "formulations": (
        "Tab. 2",
        f"D-DDIM {TABLE2['D-DDIM'][0]}; -2 {TABLE2['D-DDIM-2'][0]}, -Sep {TABLE2['D-DDIM-Sep'][0]}, "
        f"-All {TABLE2['D-DDIM-All'][0]}; DDIM {TABLE2['DDIM'][0]}",
    ),
    "ablation_K": ("Tab. 3a", "values lost in the text's extraction"),
    "ablation_B": ("Tab. 3b", "values lost in the text's extraction"),
    "correlation": ("Fig. 2", "a plot: similarities close to 1"),
    "trajectories": ("Fig. 5, 11", "a plot"),
    "lookahead": (
        "Tab. 4",
        f"D-DDIM {TABLE4['D-DDIM'][0]}, LA-DDIM {TABLE4['LA-DDIM'][0]}, "
        f"Fixed-D-DDIM {TABLE4['Fixed-D-DDIM (grid search)'][0]}",
    ),
    "cost": ("Tab. 1", "times lost in the text's extraction"),
    "dpm3_stability": ("Fig. 3 and its text", "a plot"),
}
