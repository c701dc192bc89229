"""requirements.lock, the one lock of the whole environment, agrees with pyproject.toml, is what the
bootstrap and environment.yml install, and is what the running environment holds.

- Every requirement of pyproject.toml (core, every extra) is pinned by the lock at a version it allows, and
  every package the lock names as a direct requirement of dode is still one (nothing stale, nothing new
  unlocked): `python scripts/lock.py` refreshes it.
- Every pinned package is reachable, through the lock's own `# via` annotations, from dode: the lock is
  complete and closed, so `pip install --no-deps -r requirements.lock` leaves nothing missing.
- environment.yml installs through the lock: conda's torch and torchvision at the lock's versions, pip's
  section constrained by the lock, and every other pinned package reached from the project it installs.
- The interpreter running these tests (`make test`: .venv) holds exactly the lock's versions.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
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
LOCK = REPO / "requirements.lock"
# how uv names the project in the lock's annotations
PROJECT = "dode (pyproject.toml)"
# conda-forge names that differ from the PyPI distribution they provide
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-gpu": "torch", "pytorch-cpu": "torch"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def parse_lock(text: str) -> dict[str, tuple[str, set[str]]]:
    """``{name: (version, {what requires it})}`` from uv's output; ``what`` is a package name, ``dode
    (pyproject.toml)`` or ``-c constraints.txt``."""
    entries: dict[str, tuple[str, set[str]]] = {}
    current = None
    for line in text.splitlines():
        pin = PIN.match(line)
        if pin:
            current = canonicalize_name(pin.group(1))
            entries[current] = (pin.group(2), set())
            continue
        comment = line.strip().removeprefix("#").strip()
        if current is None or not line.startswith("    #") or not comment:
            continue
        parent = comment.removeprefix("via").strip()
        if parent:
            entries[current][1].add(
                parent if parent.startswith(("-", "dode ")) else canonicalize_name(parent)
            )
    return entries


def lock() -> dict[str, tuple[str, set[str]]]:
    return parse_lock(LOCK.read_text())


def project_requirements() -> list[Requirement]:
    """The core's and every extra's requirements, dode's references to its own extras left out."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra_lines in project["optional-dependencies"].values():
        lines += extra_lines
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != "dode"]


def reachable(entries: dict[str, tuple[str, set[str]]], roots: set[str]) -> set[str]:
    """The packages whose chain of `via` annotations leads to one of ``roots``."""
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for name, (_, parents) in entries.items():
            if name not in found and parents & found:
                found.add(name)
                changed = True
    return found - roots


def test_the_lock_parser_reads_uvs_annotations():
    text = (
        "# header\nfoo==1.0\n    # via dode (pyproject.toml)\nbar-baz==2.0 ; python_version >= '3'\n"
        "    # via\n    #   -c constraints.txt\n    #   foo\n"
    )
    assert parse_lock(text) == {
        "foo": ("1.0", {PROJECT}),
        "bar-baz": ("2.0", {"-c constraints.txt", "foo"}),
    }


def test_the_lock_pins_every_requirement_of_pyproject_at_an_allowed_version():
    entries = lock()
    problems = []
    for requirement in project_requirements():
        for name in [requirement.name, *requirement.extras]:  # h5netcdf[h5py] needs h5py locked too
            if canonicalize_name(name) not in entries:
                problems.append(f"{name} is not in the lock")
        pinned = entries.get(canonicalize_name(requirement.name))
        if pinned and not requirement.specifier.contains(pinned[0], prereleases=True):
            problems.append(f"{requirement} but the lock pins {pinned[0]}")
    assert not problems, f"{problems}: refresh the lock with `python scripts/lock.py`"


def test_the_locks_direct_requirements_are_pyprojects():
    direct = {name for name, (_, parents) in lock().items() if PROJECT in parents}
    wanted = {canonicalize_name(r.name) for r in project_requirements()}
    assert direct == wanted, (
        f"the lock's direct requirements differ from pyproject.toml's (only in the lock: "
        f"{sorted(direct - wanted)}, only in pyproject: {sorted(wanted - direct)}); refresh the lock with "
        "`python scripts/lock.py`"
    )


def test_every_locked_package_is_reached_from_the_project():
    entries = lock()
    stray = set(entries) - reachable(entries, {PROJECT})
    assert not stray, f"packages in the lock that nothing of dode requires: {sorted(stray)}"


def test_the_lock_pins_the_torch_pair_of_the_constraints():
    entries = lock()
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    assert pins == {"torch": "==2.14.1", "torchvision": "==0.29.1"}
    assert {name: "==" + entries[name][0] for name in pins} == pins


def conda_requirement(spec: str) -> Requirement:
    """`name`, `name=1.2`, `name>=1`, `channel::name` (conda match specs) as a PEP 508 requirement."""
    spec = spec.split("::")[-1].split("#")[0].strip()
    name, version = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec).groups()
    if version.startswith("=") and not version.startswith("=="):
        version = "==" + version[1:].rstrip("*").rstrip(".") + (".*" if version.endswith("*") else "")
    name = CONDA_TO_PYPI.get(name.lower(), name)
    return Requirement(f"{name}{version.replace(' ', '')}")


def test_the_conda_spec_parser_maps_names_and_versions():
    assert str(conda_requirement("pytorch-gpu=2.14.1   # a comment")) == "torch==2.14.1"
    assert str(conda_requirement("conda-forge::python=3.11")) == "python==3.11"
    assert str(conda_requirement("jupyter-book<2")) == "jupyter-book<2"


def environment() -> tuple[list[str], list[str]]:
    """(conda specs, pip lines) of environment.yml."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return conda, pip


def test_environment_yml_reaches_every_pinned_package_through_the_lock():
    entries = lock()
    conda, pip = environment()
    assert "python=3.11" in conda
    assert "pytorch-gpu" in [c.split("=")[0] for c in conda], "the GPU environment needs a CUDA PyTorch"
    # pip constrained by the lock installs the project with every extra the lock was compiled for
    assert pip == ["-c requirements.lock", "-e .[all,test]"]
    from_conda = {}
    for spec in conda:
        requirement = conda_requirement(spec)
        from_conda[canonicalize_name(requirement.name)] = requirement
    # what conda supplies must be the lock's version, or pip would replace it by the locked one
    for name, requirement in from_conda.items():
        if name in entries:
            assert str(requirement.specifier) == f"=={entries[name][0]}", f"{requirement} vs the lock"
    assert {"torch", "torchvision"} <= set(from_conda)
    # everything else the lock pins is reached from the project pip installs; what only the PyPI builds
    # of torch and torchvision need (CUDA wheels, triton) comes with conda's builds instead
    through_conda = reachable({n: e for n, e in entries.items() if n not in from_conda}, set(from_conda))
    through_pip = reachable({n: e for n, e in entries.items() if n not in from_conda}, {PROJECT})
    unreached = set(entries) - set(from_conda) - through_pip - through_conda
    assert not unreached, f"pinned packages environment.yml does not reach: {sorted(unreached)}"


def test_the_bootstrap_installs_the_lock_and_the_project_in_one_pip_command():
    spec = importlib.util.spec_from_file_location("bootstrap", REPO / "scripts" / "bootstrap.py")
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    command = bootstrap.pip_command(Path("/venv/bin/python"), REPO)
    assert command[:4] == ["/venv/bin/python", "-m", "pip", "install"]
    assert "--no-deps" in command, "the lock is complete: pip must install it as it is, resolving nothing"
    assert command[command.index("-r") + 1] == str(LOCK)
    assert command[command.index("-e") + 1] == str(REPO)
    assert "requirements.lock" in bootstrap.INPUTS  # a changed lock reinstalls


def installed_versions() -> dict[str, str]:
    """``pip freeze --all`` of the interpreter running the tests, as ``{name: version}``."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
    ).stdout
    return {canonicalize_name(m.group(1)): m.group(2) for m in map(PIN.match, out.splitlines()) if m}


def test_the_environment_running_the_tests_holds_exactly_the_locked_versions():
    installed = installed_versions()
    differ = {
        name: f"lock {version}, installed {installed.get(name, 'nothing')}"
        for name, (version, _) in lock().items()
        if installed.get(name) != version
    }
    assert not differ, f"the environment differs from requirements.lock (run `make venv`): {differ}"


def test_the_lock_command_is_documented_and_compiles_pyproject_under_the_constraints():
    spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
    lock_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock_script)
    command = lock_script.compile_command("uv", [])
    assert command[:4] == ["uv", "pip", "compile", "pyproject.toml"]
    assert command[command.index("--constraint") + 1] == "constraints.txt"
    assert command[command.index("--output-file") + 1] == LOCK.name
    assert LOCK.read_text().splitlines()[1].strip("# ") == lock_script.REFRESH_COMMAND
    assert lock_script.REFRESH_COMMAND in (REPO / "README.md").read_text()
