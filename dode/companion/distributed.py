"""The processes of one sweep: a plain run (one process) or the ranks torchrun starts.

torchrun (``torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` for every process it
starts, on one node or several, and its own rendezvous finds the peers; :func:`join` reads them and opens
the process group (NCCL on CUDA, gloo on the CPU). Without them it is a world of one process, and every
collective below is the identity, so the single-process sweep runs through exactly the same code.

Rank 0 is the only one that reads and writes the results file and fits lambdas; it tells the others what it
decided (:meth:`World.broadcast`) and collects their metric features (:meth:`World.gather`).
"""

from __future__ import annotations

import atexit
import datetime
import io
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["World", "join", "under_torchrun", "launch"]

#: how long a rank waits in a collective: rank 0 fits lambdas (a teacher run of K * NFE evaluations on B
#: noises) and writes the results file while the others wait for its broadcast
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place among the sweep's processes (``rank`` of ``size``; ``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """Where this rank computes: ``cuda:LOCAL_RANK`` for a CUDA sweep of several ranks, else ``device``."""
        if self.size > 1 and torch.device(device).type == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (pickled: lambdas arrive bit for bit)."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj``, in rank order, on rank 0; ``None`` on the others."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (as one of several ranks)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str) -> World:
    """This process's world: under torchrun its rank, with the process group opened (once per process, and
    closed at exit; NCCL for a CUDA ``device``, else gloo); otherwise a world of one process."""
    if not under_torchrun():
        return World()
    world = World(
        rank=int(os.environ["RANK"]),
        size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if torch.distributed.is_initialized():
        return world
    cuda = torch.device(device).type == "cuda"
    if cuda:
        # NCCL's object collectives use the current device: each rank its own GPU
        torch.cuda.set_device(world.local_rank)
    # torchrun's store outlives a restart (--max-restarts) and still holds the dead workers' addresses under
    # the keys a new group reads: gloo then waits for peers that are gone. Each attempt gets keys of its own.
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", timeout=TIMEOUT))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    torch.distributed.init_process_group(
        backend="nccl" if cuda else "gloo",
        store=torch.distributed.PrefixStore(f"dode-attempt-{attempt}/", store),
        rank=world.rank,
        world_size=world.size,
        timeout=TIMEOUT,
    )
    atexit.register(torch.distributed.destroy_process_group)
    return world


def launch(stem: str, cfg: dict, results_dir: str | Path, nproc: int) -> None:
    """Run ``stem``'s sweep with resolved parameters ``cfg`` in ``nproc`` processes on this node (torchrun,
    standalone) and wait. The processes print to the terminal, never into a notebook that calls this."""
    import dode

    with tempfile.TemporaryDirectory(prefix="dode-sweep-") as tmp:
        # JSON is YAML: the resolved parameters, as the notebook has them (a torch dtype as its name)
        params = Path(tmp) / "params.json"
        params.write_text(json.dumps({k: v for k, v in cfg.items() if k != "profile"}, default=str))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "dode.sweep",
            stem,
            "--profile",
            cfg["profile"],
            "--results-dir",
            str(Path(results_dir).absolute()),
            "--params",
            str(params),
        ]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process, as torchrun's default
        # the processes import the same dode as this one (a checkout on PYTHONPATH, say)
        source = str(Path(dode.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
        terminal = _terminal()
        done = subprocess.run(command, env=env, stdout=terminal, stderr=terminal, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"the sweep of {stem} in {nproc} processes failed (exit status {done.returncode}); its output is "
            "on the terminal that started this kernel. Run it again to resume: finished cells are kept."
        )


def _terminal() -> int | None:
    """The file descriptor of the terminal. In a Jupyter kernel ``sys.stderr`` goes into the notebook, but its
    ``fileno()`` is the process's own stderr as it was before (ipykernel keeps a copy for subprocesses); None
    (inherit) where stderr has no descriptor."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None
