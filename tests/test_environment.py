"""The ways of building the environment agree with each other and with the README.

- environment.yml (conda, GPU box) names every runtime dependency of pyproject.toml, with its version bound.
- constraints.txt pins the torch/torchvision pair, and the bootstrap installs with it in one pip command.
- The README's test command is what .ci/run runs, and the README shows exactly two commands.
- The bootstrap installs once and is a no-op while pyproject.toml and constraints.txt are unchanged.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
# conda-forge names that differ from the PyPI distribution they provide
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-gpu": "torch", "pytorch-cpu": "torch"}
EXPECTED_PINS = {"torch": "==2.14.1", "torchvision": "==0.29.1"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def conda_requirement(spec: str) -> Requirement:
    """`name`, `name=1.2`, `name>=1`, `channel::name` (conda match specs) as a PEP 508 requirement."""
    spec = spec.split("::")[-1].split("#")[0].strip()
    name, version = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec).groups()
    if version.startswith("=") and not version.startswith("=="):
        version = "==" + version[1:].rstrip("*").rstrip(".") + (".*" if version.endswith("*") else "")
    name = CONDA_TO_PYPI.get(name.lower(), name)
    return Requirement(f"{name}{version.replace(' ', '')}")


def environment_requirements() -> dict[str, Requirement]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    found: dict[str, Requirement] = {}
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            for line in dependency.get("pip", []):
                if not line.startswith("-"):  # skip options such as `-e .[test]`
                    requirement = Requirement(line)
                    found[canonicalize_name(requirement.name)] = requirement
        else:
            requirement = conda_requirement(dependency)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def runtime_requirements() -> list[Requirement]:
    """The core's dependencies and those of every extra but ``test`` (the extras' references to dode
    itself left out): what the full installation of the README and environment.yml brings."""
    project = pyproject()["project"]
    lines = list(project["dependencies"])
    for extra, extra_lines in project["optional-dependencies"].items():
        if extra != "test":
            lines += extra_lines
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if canonicalize_name(r.name) != "dode"]


def test_the_core_depends_on_torch_and_numpy_only():
    assert sorted(pyproject()["project"]["dependencies"]) == ["numpy", "torch"]


def test_environment_yml_names_every_runtime_dependency_with_its_bounds():
    listed = environment_requirements()
    missing, loosened = [], []
    for requirement in runtime_requirements():
        # an extra such as h5netcdf[h5py] pulls in a package of its own: conda must name it too
        for name in [requirement.name, *requirement.extras]:
            if canonicalize_name(name) not in listed:
                missing.append(name)
        env_requirement = listed.get(canonicalize_name(requirement.name))
        if env_requirement is not None and str(requirement.specifier) != str(env_requirement.specifier):
            loosened.append(f"{requirement} vs {env_requirement}")
    assert not missing, f"runtime dependencies of pyproject.toml missing from environment.yml: {missing}"
    assert not loosened, f"version bounds differ between pyproject.toml and environment.yml: {loosened}"


def test_environment_yml_is_python_311_with_cuda_torch_and_installs_the_project():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in conda
    assert "pytorch-gpu" in conda, "the GPU environment needs a CUDA build of PyTorch"
    assert "torchvision" in conda
    assert "-e .[all,test]" in pip


def test_the_conda_spec_parser_maps_names_and_versions():
    assert str(conda_requirement("pytorch-gpu")) == "torch"
    assert str(conda_requirement("conda-forge::python=3.11")) == "python==3.11"
    assert str(conda_requirement("jupyter-book<2")) == "jupyter-book<2"


def test_constraints_pin_the_matching_torch_and_torchvision():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    assert {name: pins.get(name) for name in EXPECTED_PINS} == EXPECTED_PINS


def test_test_extra_has_the_test_tools():
    test_extra = pyproject()["project"]["optional-dependencies"]["test"]
    extra = {canonicalize_name(Requirement(line).name) for line in test_extra}
    assert {"pytest", "ruff", "hypothesis"} <= extra


FENCED_SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell)?\n(.*?)```", re.S)


def readme_command_blocks() -> list[list[str]]:
    """The lines of every fenced shell block in README.md."""
    text = (REPO / "README.md").read_text()
    return [block.strip().splitlines() for block in FENCED_SHELL_BLOCK.findall(text)]


def test_readme_shows_exactly_the_two_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = FENCED_SHELL_BLOCK.findall(section)
    assert len(blocks) == 1
    assert blocks[0].strip().splitlines() == ["make book", "make test"]
    # no other fenced block presents a make command as a way in
    make_lines = [line for block in readme_command_blocks() for line in block if line.startswith("make")]
    assert make_lines == ["make book", "make test"]


def test_ci_runs_exactly_the_readme_test_command():
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    readme_test_command = FENCED_SHELL_BLOCK.findall(section)[0].strip().splitlines()[-1]
    script = (REPO / ".ci" / "run").read_text()
    commands = [
        line.strip()
        for line in script.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert commands == [readme_test_command] == ["make test"]
    assert script.startswith("#!/usr/bin/env bash")


def test_makefile_test_target_runs_ruff_and_pytest_without_masking_failures():
    makefile = (REPO / "Makefile").read_text()
    recipe_text = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    recipe = [line.strip() for line in recipe_text.splitlines()]
    assert any(line.endswith("ruff check .") for line in recipe)
    assert any(line.endswith("-m pytest") for line in recipe)
    # a leading '-' or '|| true' would let a failing (or empty: exit status 5) test run pass
    assert not any(line.startswith("-") or "||" in line for line in recipe)


def load_bootstrap():
    spec = importlib.util.spec_from_file_location("bootstrap", REPO / "scripts" / "bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bootstrap_installs_in_one_pip_command_with_the_constraints():
    bootstrap = load_bootstrap()
    command = bootstrap.pip_command(Path("/venv/bin/python"), REPO)
    assert command[:4] == ["/venv/bin/python", "-m", "pip", "install"]
    assert command[command.index("-c") + 1] == str(REPO / "constraints.txt")
    assert command[command.index("-e") + 1] == f"{REPO}[all,test]"


@pytest.fixture
def fake_repo(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "constraints.txt").write_text("torch==2.14.1\n")
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    return tmp_path


def test_bootstrap_installs_once_and_again_only_when_its_inputs_change(fake_repo, monkeypatch):
    bootstrap = load_bootstrap()
    installs = []
    monkeypatch.setattr(bootstrap, "run_pip", lambda command, repo: installs.append(command) or 0)
    venv = fake_repo / ".venv"
    assert bootstrap.bootstrap(fake_repo, venv) == 0
    assert bootstrap.bootstrap(fake_repo, venv) == 0
    assert len(installs) == 1, "an unchanged pyproject.toml/constraints.txt must not reinstall"
    (fake_repo / "constraints.txt").write_text("torch==2.14.1\ntorchvision==0.29.1\n")
    assert bootstrap.bootstrap(fake_repo, venv) == 0
    assert len(installs) == 2


def test_bootstrap_keeps_no_stamp_when_pip_fails(fake_repo, monkeypatch):
    bootstrap = load_bootstrap()
    monkeypatch.setattr(bootstrap, "run_pip", lambda command, repo: 1)
    assert bootstrap.bootstrap(fake_repo, fake_repo / ".venv") == 1
    assert not (fake_repo / ".venv" / bootstrap.STAMP_NAME).exists()


def test_bootstrap_leaves_a_linked_venv_alone(fake_repo, monkeypatch):
    bootstrap = load_bootstrap()
    monkeypatch.setattr(bootstrap, "run_pip", lambda command, repo: pytest.fail("pip ran in a linked venv"))
    (fake_repo / "linked").symlink_to(fake_repo / ".venv")
    assert bootstrap.bootstrap(fake_repo, fake_repo / "linked") == 0


def test_bootstrap_hides_only_the_harmless_pip_location_warnings():
    pattern = load_bootstrap().HARMLESS_PIP_LINE
    assert pattern.search(
        "WARNING: Location '/opt/pypi-more/simple/numpy/' is ignored: it is either a "
        "non-existing path or lacks a specific scheme."
    )
    assert not pattern.search("ERROR: No matching distribution found for torch==2.14.1")
