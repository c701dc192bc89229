"""The ways of building the environment agree with each other and with the README.

- The README's test command is what .ci/run runs, and the README shows exactly two commands.
- The bootstrap installs once and is a no-op while pyproject.toml and requirements.lock are unchanged.

(requirements.lock against pyproject.toml, environment.yml and the running environment: tests/test_lock.py)
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_core_depends_on_torch_and_numpy_only():
    assert sorted(pyproject()["project"]["dependencies"]) == ["numpy", "torch"]


def test_test_extra_has_the_test_tools():
    test_extra = pyproject()["project"]["optional-dependencies"]["test"]
    extra = {canonicalize_name(Requirement(line).name) for line in test_extra}
    assert {"pytest", "ruff", "hypothesis", "build", "twine"} <= extra


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


@pytest.fixture
def fake_repo(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "requirements.lock").write_text("torch==2.14.1\n")
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
    assert len(installs) == 1, "an unchanged pyproject.toml/requirements.lock must not reinstall"
    (fake_repo / "requirements.lock").write_text("torch==2.14.1\ntorchvision==0.29.1\n")
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
