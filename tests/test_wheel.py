"""The wheel works outside the checkout.

`python -m build` makes the sdist and, from it, the wheel; the wheel carries the package data (the embedded
models, the digit classifier, the digits' reference statistics and split record) and is the same wheel as
one built straight from the tree; `twine check --strict` accepts both. Installed into a fresh virtual
environment in a temporary folder, with no PYTHONPATH and no access to this checkout, it runs the README's
library example (load, distill, sample, FD) and `DODEScheduler` in a diffusers `DDPMPipeline` built from the
embedded model.

The fresh environment gets its third-party packages from the environment running the tests (the locked
.venv, tests/test_lock.py) through a `.pth` file naming a folder of links to them, dode's own files left out:
`pip install --no-index` then resolves the wheel's requirements against them, offline and in seconds,
instead of reinstalling GBs of torch. The wheel is built with `--no-isolation`, so from the locked setuptools.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import dode

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "dode" / "assets"
# the entries of the running environment's site-packages that belong to dode itself (its editable install)
OWN_ENTRIES = re.compile(r"^(dode\b|__editable__|_dode)|\.pth$")


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def build(outdir: Path, *options: str) -> None:
    run([sys.executable, "-m", "build", "--no-isolation", *options, "--outdir", outdir, REPO])


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build(out)  # the sdist, then the wheel built from the unpacked sdist
    return out


def only(folder: Path, pattern: str) -> Path:
    (path,) = folder.glob(pattern)
    return path


def test_the_version_lives_in_dode_version_only(dist):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dode.version.__version__"}
    assert only(dist, "*.whl").name == f"dode-{dode.__version__}-py3-none-any.whl"
    assert only(dist, "*.tar.gz").name == f"dode-{dode.__version__}.tar.gz"


def test_the_wheel_carries_every_asset(dist):
    names = set(zipfile.ZipFile(only(dist, "*.whl")).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in ASSETS.rglob("*") if p.is_file()}
    assert {"dode/assets/models/digits-eps.safetensors", "dode/assets/fid_stats/digits-train.npz"} <= shipped
    assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"


def test_the_sdist_builds_the_wheel_built_from_the_tree(dist, tmp_path):
    build(tmp_path, "--wheel")
    from_sdist, from_tree = zipfile.ZipFile(only(dist, "*.whl")), zipfile.ZipFile(only(tmp_path, "*.whl"))
    assert sorted(from_sdist.namelist()) == sorted(from_tree.namelist())
    differ = [n for n in from_tree.namelist() if from_sdist.read(n) != from_tree.read(n)]
    assert not differ, f"files that differ between the two wheels: {differ}"


def test_twine_accepts_the_sdist_and_the_wheel(dist):
    run([sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir())])


def readme_library_example() -> str:
    section = (REPO / "README.md").read_text().split("## As a library", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return block


# Run after the README's example, in the fresh environment: where everything came from, the FDs, and the
# embedded model in a diffusers pipeline whose scheduler is DODEScheduler with the example's lambdas.
CHECKS = """
import importlib.metadata
import json
import sys

import numpy as np
from diffusers import DDPMPipeline, DDPMScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

import dode.files
from dode.integrations.diffusers import DODEScheduler


class EmbeddedUNet(ModelMixin, ConfigMixin):
    # the embedded network as a diffusers UNet: what DDPMPipeline calls, on its (batch, C, H, W) sample
    @register_to_config
    def __init__(self, sample_size: int = 8, in_channels: int = 1):
        super().__init__()
        self.net = den.fn

    def forward(self, sample, timestep, return_dict=True):
        t = torch.full((sample.shape[0],), float(timestep), dtype=torch.float32)
        return UNet2DOutput(sample=self.net(sample, t))


scheduler = DODEScheduler.from_config(DDPMScheduler().config, lambdas=lambdas)
pipe = DDPMPipeline(unet=EmbeddedUNet(), scheduler=scheduler)
pipe.set_progress_bar_config(disable=True)
generator = torch.Generator().manual_seed(7)
with torch.no_grad():
    images = pipe(batch_size=4, generator=generator, num_inference_steps=5, output_type="np").images
pipe_noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
expected = dode.sample(den, pipe_noise, solver="dpm_solver++", nfe=5, lambdas=lambdas)
expected = (expected.to(torch.float32) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
print(json.dumps({
    "prefix": sys.prefix,
    "dode": dode.__file__,
    "assets": str(dode.files.asset()),
    "version": dode.__version__,
    "metadata_version": importlib.metadata.version("dode"),
    "fd": [dode.metrics.fd(base), dode.metrics.fd(distilled)],
    "pipeline_shape": list(images.shape),
    "pipeline_max_difference": float(np.abs(images - expected).max()),
}))
"""


def linked_site_packages(folder: Path) -> Path:
    """A folder of links to the running environment's third-party packages (dode's own entries left out)."""
    folder.mkdir()
    site = Path(sysconfig.get_path("purelib"))
    for entry in site.iterdir():
        if not OWN_ENTRIES.search(entry.name) and entry.name != "__pycache__":
            (folder / entry.name).symlink_to(entry)
    return folder


def test_the_installed_wheel_runs_the_readme_example_and_a_diffusers_pipeline_outside_the_checkout(
    dist, tmp_path
):
    assert not tmp_path.resolve().is_relative_to(REPO)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    (Path(purelib) / "locked-dependencies.pth").write_text(f"{linked_site_packages(tmp_path / 'deps')}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    wheel = only(dist, "*.whl")
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--find-links", dist]
        + [f"dode[zoo,metrics] @ {wheel.as_uri()}"],
        env=env,
        cwd=tmp_path,
    )
    script = tmp_path / "example.py"
    script.write_text(readme_library_example() + CHECKS)
    out = run([python, "-I", script], env=env, cwd=tmp_path).stdout
    printed, report = out.strip().splitlines()[-2:]
    report = json.loads(report)
    assert printed.startswith("FD ")  # the README's own line
    assert Path(report["dode"]).is_relative_to(report["prefix"]), "dode was not imported from the wheel"
    assert Path(report["assets"]).is_relative_to(report["prefix"])
    assert report["version"] == report["metadata_version"] == dode.__version__
    assert all(0 < fd < 1e3 for fd in report["fd"]), report["fd"]
    assert report["pipeline_shape"] == [4, 8, 8, 1]
    # the pipeline's images are dode.sample's on the pipeline's own noise (see the README's diffusers section)
    assert report["pipeline_max_difference"] == 0.0
