"""The core stands alone: ``import dode`` and sampling/distilling need only torch and numpy."""

import subprocess
import sys

HEAVY = [
    "xarray",
    "diffusers",
    "pytorch_fid",
    "papermill",
    "matplotlib",
    "seaborn",
    "sklearn",
    "scipy",
    "h5py",
]

SCRIPT = f"""
import sys, torch, dode
den = dode.Denoiser(lambda x, t: 0.1 * x, dode.VPSchedule.linear(), prediction="eps")
noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
for solver, nfe in [("ddim", 5), ("dpm_solver++", 5), ("ipndm", 5), ("deis", 5), ("dpm_solver", 5)]:
    lam = dode.distill(den, noise, solver=solver, nfe=nfe)
    x = dode.sample(den, noise, solver=solver, nfe=nfe, lambdas=lam)
    assert torch.isfinite(x).all()
den_edm = dode.Denoiser(lambda x, sigma: x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2), dode.EDMSchedule(), prediction="x0")
x = dode.sample(den_edm, noise, solver="edm", nfe=5, lambdas=dode.distill(den_edm, noise, solver="edm", nfe=5))
assert torch.isfinite(x).all()
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_core_samples_and_distills_without_importing_the_companion():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_the_core_modules_import_nothing_outside_the_core():
    # the core never imports the models, the metrics or the companion (they import it)
    script = (
        "import sys, dode, dode.gmm, dode.reference; "
        "print(sorted(m for m in sys.modules if m.startswith(('dode.zoo', 'dode.metrics', 'dode.companion', 'dode.integrations'))))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
