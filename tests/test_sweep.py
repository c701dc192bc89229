"""The sweep runner (``python -m dode.sweep``) in one process and sharded over torchrun's ranks (gloo).

The results file must not depend on the number of processes (FD and lambdas bit for bit; timings aside), a
killed rank must leave a file that the same command resumes without recomputing or losing a cell, and a
notebook with ``nproc=2`` runs its sweep that way. Every command book/gpu.md shows for the CLI runs here in
the smoke profile.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dode.companion import sweep
from dode.companion.experiments import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
#: three evaluation batches of 16 (the smoke profile's 48 samples), dealt unevenly to two ranks
BATCHES = ["--set", "batch_size=16"]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"  # one thread per process, in both runs
    env.update(extra)
    return env


def _run(command: list[str], check: bool = True, **env) -> subprocess.CompletedProcess:
    # a session of its own: on a timeout, torchrun's workers are killed with it, not orphaned
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = subprocess.CompletedProcess(command, proc.returncode, out, err)
    if check and done.returncode != 0:
        raise AssertionError(f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}")
    return done


def _cli(stem: str, results_dir: Path, *more: str) -> list[str]:
    return [stem, "--profile", "smoke", "--results-dir", str(results_dir), "--no-progress", *BATCHES, *more]


def _load(path: Path):
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def _assert_same_results(a, b) -> None:
    """FD and lambdas identical bit for bit, on the same cells."""
    for var in ("fd", "lambdas"):
        assert a[var].dims == b[var].dims
        for dim in a[var].dims:
            assert a[var][dim].values.tolist() == b[var][dim].values.tolist(), dim
        assert np.array_equal(a[var].values, b[var].values, equal_nan=True), var


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The results file of ``python -m dode.sweep STEM`` (one process), per stem, computed once."""
    files: dict[str, Path] = {}

    def results(stem: str) -> Path:
        if stem not in files:
            out = tmp_path_factory.mktemp(f"one-{stem}")
            _run([sys.executable, "-m", "dode.sweep", *_cli(stem, out)])
            files[stem] = out / f"{stem}.nc"
        return files[stem]

    return results


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["02_noise_prediction", "03_data_prediction", "04_dpm_solver_pp"])
def test_two_processes_give_the_results_of_one(stem, one_process, tmp_path):
    _run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "dode.sweep", *_cli(stem, tmp_path)])
    two = _load(tmp_path / f"{stem}.nc")
    one = _load(one_process(stem))
    _assert_same_results(two, one)
    assert np.isfinite(two["fd"].values).any()
    # every fitted cell stores its fit once (a per-stage method identical to its per-time one is not computed)
    fitted = [m for m in two["method"].values.tolist() if m != "base"]
    done = np.isfinite(two["fd"].sel({"method": fitted}).values)
    assert done.any() and np.isfinite(two["fit_seconds"].sel({"method": fitted}).values[done]).all()


def _finished(ds) -> dict:
    """Each finished cell's sample_seconds (a recomputed cell would get a new timing)."""
    secs = ds["sample_seconds"].to_series().dropna()
    return {cell: float(v) for cell, v in secs.items()}


@pytest.mark.slow
def test_a_killed_rank_is_resumed_by_rerunning_the_same_command(one_process, tmp_path):
    stem = "04_dpm_solver_pp"  # 4 units: base and D- at NFE 3 and 5
    killer = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "tests/killed_rank.py", *_cli(stem, tmp_path)]
    marker = tmp_path / "killed"
    # rank 1 dies entering the fourth sampling run (D-DPM-Solver++ at NFE 5, whose lambdas are already stored)
    died = _run(killer, check=False, KILL_MARKER=str(marker), KILL_AFTER="3")
    assert died.returncode != 0 and marker.exists(), died.stderr[-2000:]
    before = _load(tmp_path / f"{stem}.nc")
    finished = _finished(before)
    assert len(finished) == 3, finished  # the three finished units, not the interrupted one
    assert np.isfinite(before["lambdas"].sel({"method": "d-ode", "nfe": 5}).values).any()

    _run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "dode.sweep", *_cli(stem, tmp_path)])
    after = _load(tmp_path / f"{stem}.nc")
    resumed = _finished(after)
    assert len(resumed) == after["fd"].size  # no cell missing
    assert {cell: resumed[cell] for cell in finished} == finished  # finished cells were not recomputed
    assert (
        after["fit_seconds"].sel({"method": "d-ode", "nfe": 5}).item()
        == before["fit_seconds"].sel({"method": "d-ode", "nfe": 5}).item()
    )  # nor the stored fit
    _assert_same_results(after, _load(one_process(stem)))  # nothing duplicated or shifted


@pytest.mark.slow
def test_torchrun_max_restarts_recovers_a_killed_rank_by_itself(one_process, tmp_path):
    stem = "04_dpm_solver_pp"
    marker = tmp_path / "killed"
    command = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "--max-restarts=1", "tests/killed_rank.py"]
    _run([*command, *_cli(stem, tmp_path)], KILL_MARKER=str(marker), KILL_AFTER="1")
    assert marker.exists()  # the rank did die, and the restarted workers finished the sweep
    _assert_same_results(_load(tmp_path / f"{stem}.nc"), _load(one_process(stem)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_give_the_results_of_one(one_process, tmp_path):
    # book/gpu.md's multi-node command, both "nodes" on this machine with one process each
    stem = "02_noise_prediction"
    rdzv = ["--nnodes=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "--nproc_per_node=1"]
    cli = ["-m", "dode.sweep", *_cli(stem, tmp_path)]
    nodes = [
        subprocess.Popen(
            [*TORCHRUN, f"--node_rank={rank}", *rdzv, *cli],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    _assert_same_results(_load(tmp_path / f"{stem}.nc"), _load(one_process(stem)))


@pytest.mark.slow
def test_a_notebook_with_nproc_2_runs_its_sweep_in_two_processes(one_process, tmp_path):
    import papermill

    stem = "04_dpm_solver_pp"
    executed = tmp_path / f"{stem}.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{stem}.ipynb"),
        str(executed),
        parameters={"profile": "smoke", "results_dir": str(tmp_path), "nproc": 2, "batch_size": 16},
        kernel_name="python3",
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
    )
    _assert_same_results(_load(tmp_path / f"{stem}.nc"), _load(one_process(stem)))
    # the processes' progress and torchrun's messages went to the terminal, not into the notebook
    outputs = json.dumps([c.get("outputs", []) for c in json.loads(executed.read_text())["cells"]])
    assert "runs:" not in outputs and "torch.distributed" not in outputs


def test_parameters_come_from_a_yaml_file_and_set_assignments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seeds: [0, 1]\nK: 4\nnfes: {ddim: [3]}\n")
    given = sweep.parameters(params, ["K=5", "methods=[base, d-ode]", "device=cpu"])
    assert given == {
        "seeds": [0, 1],
        "K": 5,
        "nfes": {"ddim": [3]},
        "methods": ["base", "d-ode"],
        "device": "cpu",
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        sweep.parameters(None, ["seeds"])
    params.write_text("- 1\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        sweep.parameters(params, [])


def test_the_cli_names_the_known_parameters_and_stems(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep.main(
            ["02_noise_prediction", "--profile", "smoke", "--results-dir", str(tmp_path), "--set", "nfe=3"]
        )
    assert exit_.value.code == 2
    assert "unknown parameter(s) ['nfe']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["10_timing", "--profile", "smoke", "--results-dir", str(tmp_path)])
    assert "02_noise_prediction" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("nproc", [0, -1, 1.5])
def test_run_sweep_refuses_a_bad_nproc(nproc, tmp_path):
    with pytest.raises(ValueError, match="nproc must be a positive number"):
        run_sweep("02_noise_prediction", {"profile": "smoke"}, tmp_path, nproc=nproc)


def _documented_commands() -> list[list[str]]:
    import shlex

    text = (ROOT / "book" / "gpu.md").read_text()
    lines = [
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        for line in block.splitlines()
    ]
    return [shlex.split(line) for line in lines if "dode.sweep" in line]


def test_every_sweep_command_of_the_gpu_page_parses():
    # the tests above run each form (one process, --standalone, two nodes, --max-restarts) in the smoke profile
    from torch.distributed.run import parse_args

    commands = _documented_commands()
    assert len(commands) >= 6
    for words in commands:
        if words[0] == "torchrun":
            args = parse_args(words[1:])
            assert args.module and args.training_script == "dode.sweep", words
            words = args.training_script_args
        else:
            assert words[:3] == ["python", "-m", "dode.sweep"], words
            words = words[3:]
        parsed = sweep.parser().parse_args(words)
        assert parsed.profile == "paper" and parsed.stem in sweep.SWEEPS
        assert sweep.parameters(None, parsed.set) is not None


def test_every_paper_sweep_of_the_gpu_page_names_its_checkpoints():
    """A paper sweep without the run's configuration file finds no checkpoint: every command passes
    ``--params paper.yaml`` (or sets ``model_options`` itself)."""
    for words in _documented_commands():
        given = dict(zip(words, words[1:], strict=False))
        assert given.get("--params") == "paper.yaml" or any(w.startswith("model_options=") for w in words), (
            " ".join(words)
        )


def _as_smoke(words: list[str], nproc: int, port: int) -> list[str]:
    """A torchrun line of the GPU page on this machine: this interpreter's torchrun, ``nproc`` processes per
    node, the rendezvous on this host, the smoke profile. Nothing else is changed."""
    out = [*TORCHRUN] if words[0] == "torchrun" else [*words[:1]]
    for word in words[1:]:
        if word.startswith("--nproc_per_node="):
            word = f"--nproc_per_node={nproc}"
        elif word.startswith("--master_addr="):
            word = "--master_addr=127.0.0.1"
        elif word.startswith("--master_port="):
            word = f"--master_port={port}"
        out.append(word)
    return ["smoke" if prev == "--profile" else w for prev, w in zip(["", *out[:-1]], out, strict=True)]


@pytest.mark.slow
def test_the_gpu_pages_torchrun_commands_run_as_written(tmp_path):
    """Each torchrun line of book/gpu.md, in order, from a folder holding the run's ``paper.yaml`` (the
    example file, on the CPU): two processes (gloo) where it starts eight; the two-node lines together, one
    process each. The first computes the sweep, the others find it done: none recomputes a cell."""
    import yaml

    example = yaml.safe_load((ROOT / "notebooks" / "paper.example.yaml").read_text())
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump({**example, "device": "cpu"}))
    lines = [w for w in _documented_commands() if w[0] == "torchrun"]
    assert len(lines) == 4
    nodes = [w for w in lines if "--nnodes=2" in w]
    results, port = None, _free_port()
    for words in [w for w in lines if w not in nodes] + [None]:
        # the standalone lines need no port; the two nodes share one
        commands = [_as_smoke(words, 2, 0)] if words else [_as_smoke(w, 1, port) for w in nodes]
        procs = [
            subprocess.Popen(
                command,
                cwd=tmp_path,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            for command in commands
        ]
        try:
            outputs = [proc.communicate(timeout=600)[0] for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        assert [proc.returncode for proc in procs] == [0] * len(procs), (commands, outputs)
        ds = _load(tmp_path / "data" / "results" / "paper" / "02_noise_prediction.nc")
        assert ds.attrs["profile"] == "smoke" and np.isfinite(ds["fd"].values).any()
        if results is None:
            results = _finished(ds)
        assert _finished(ds) == results  # the later commands resumed a finished file


def test_model_options_take_a_dtype_by_name_and_channels_last(monkeypatch):
    import torch

    import dode
    from dode import zoo
    from dode.companion import experiments as ex

    den = ex.load_model("digits-eps-mini", model_options={"digits-eps-mini": {"dtype": "bfloat16"}})
    assert den.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in den.fn.parameters())
    with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float16', 'float32'\]"):
        ex.load_model("digits-eps-mini", model_options={"digits-eps-mini": {"dtype": "half"}})

    def conv_model(name, device="cpu", dtype=None, **options):  # a network whose layout can be seen
        return dode.Denoiser(torch.nn.Conv2d(3, 3, 3, padding=1), dode.VPSchedule.linear(), prediction="eps")

    monkeypatch.setattr(zoo, "load", conv_model)
    weight = ex.load_model("any", model_options={"any": {"channels_last": True}}).fn.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert ex.precision_key({"dtype": "float16", "channels_last": True}) == {
        "dtype": "float16",
        "channels_last": 1,
    }
    assert ex.precision_key({"dtype": torch.bfloat16}) == {"dtype": "bfloat16"}
    assert ex.precision_key({"dtype": "float32", "path": "x"}) == {} == ex.precision_key(None)


def test_a_half_precision_sweep_never_mixes_with_a_float32_file(tmp_path):
    from dode.companion.experiments import settings
    from dode.companion.protocols import PROTOCOLS
    from dode.companion.results import IncompatibleResults

    stem = "04_dpm_solver_pp"
    small = dict(nfes=[3], methods=["base"])
    run_sweep(stem, settings(PROTOCOLS[stem], "smoke", **small), tmp_path, progress=False)
    model = PROTOCOLS[stem]["smoke"]["models"][0]
    half = settings(PROTOCOLS[stem], "smoke", model_options={model: {"dtype": "bfloat16"}}, **small)
    with pytest.raises(IncompatibleResults, match="precision"):
        run_sweep(stem, half, tmp_path, progress=False)


def test_a_rank_computes_on_its_own_gpu_and_a_single_process_world_is_the_identity(monkeypatch):
    from dode.companion.distributed import World, join

    assert World(rank=3, size=4, local_rank=1).device("cuda") == "cuda:1"
    assert World(rank=3, size=4, local_rank=1).device("cpu") == "cpu"
    assert World().device("cuda") == "cuda"  # one process: the device asked for
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = join("cpu")
    assert world == World() and world.is_main
    assert world.broadcast({"x": 1}) == {"x": 1} and world.gather(5) == [5]
