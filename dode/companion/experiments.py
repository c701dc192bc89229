"""What the experiment notebooks share: profiles, deterministic noise, fits, and resumable quality sweeps.

A notebook stays thin: it resolves its parameters with :func:`settings`, calls :func:`quality_sweep` (or the
smaller pieces below) with a :class:`~dode.companion.results.ResultStore`, and draws its figures from the stored file.

Noise is drawn from independent, named streams (:func:`noise`): the *fitting* batch of seed ``s`` and the
*evaluation* samples of seed ``s`` come from different streams, so evaluation never includes the fitting
batch, and every method of one seed sees the *same* evaluation noise (a paired comparison). Streams are
drawn in fixed chunks, so sample ``i`` of a stream does not depend on the batch size used to generate it.

The metric's noise floor (:func:`noise_floor`: what a converged sampler scores on the same evaluation noise
at a sweep's sample count) is computed once per model, sampler, count and seed, cached under the results
folder, and stored by every sweep in its own file (:func:`sweep_floor`) for its figures' band.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from dode.companion.distributed import World, join, under_torchrun
from dode.denoiser import Denoiser
from dode.distill import distill
from dode.lambdas import VARIANTS, Lambdas
from dode.progress import progress_bar
from dode.sampling import sample
from dode.schedules import EDMSchedule

SINGLE = World()  # one process: every collective is the identity

__all__ = [
    "PROFILES",
    "SOLVER_LABELS",
    "check_profile",
    "settings",
    "noise",
    "load_model",
    "DTYPES",
    "precision_key",
    "make_metric",
    "sample_shape",
    "fit_lambdas",
    "sample_stats",
    "quality_sweep",
    "one_at_a_time",
    "sweep_points",
    "method_kind",
    "method_nfes",
    "CONSTANT_METHODS",
    "FITTED_METHODS",
    "JOINT_METHODS",
    "PAPER_TEACHERS",
    "teacher_of",
    "open_store",
    "model_record",
    "identity",
    "class_labels",
    "conditioned",
    "run_sweep",
    "results_path",
    "FLOOR_DIR",
    "check_floor",
    "reference_sampler",
    "sampler_description",
    "floor_path",
    "noise_floor",
    "store_floor",
    "describe_floor",
    "sweep_floor",
]

PROFILES = ("smoke", "cpu", "paper")

#: solver label -> (dode solver, options); labels name solvers in results files and figures
SOLVER_LABELS: dict[str, tuple[str, dict]] = {
    "ddim": ("ddim", {}),
    "ipndm": ("ipndm", {}),
    "deis3": ("deis", {"order": 3}),
    "deis2": ("deis", {"order": 2}),
    # the same solvers with the lower-order last steps of diffusers' multistep schedulers (book/method.md,
    # first and last steps): beside the full-order ones they tell a D-solver that only repairs a bad last step
    # from one that improves on the base solver in both forms (notebook 02)
    "ipndm_lof": ("ipndm", {"lower_order_final": True}),
    "deis3_lof": ("deis", {"order": 3, "lower_order_final": True}),
    # DEIS of every order, with and without the lowered last steps (issue 22: DEIS-2 and DEIS-1 beat DEIS-3 at
    # small NFE on digits)
    "deis1": ("deis", {"order": 1}),
    "deis1_lof": ("deis", {"order": 1, "lower_order_final": True}),
    "deis2_lof": ("deis", {"order": 2, "lower_order_final": True}),
    # UniPC as diffusers' UniPCMultistepScheduler runs it (order 2 and lowered last steps by default), bh1 and
    # bh2, order 2 and 3; "_full": the full-order last steps (lower_order_final=False)
    "unipc_bh1": ("unipc", {"solver_type": "bh1"}),
    "unipc_bh2": ("unipc", {"solver_type": "bh2"}),
    "unipc3_bh1": ("unipc", {"order": 3, "solver_type": "bh1"}),
    "unipc3_bh2": ("unipc", {"order": 3, "solver_type": "bh2"}),
    "unipc_bh2_full": ("unipc", {"solver_type": "bh2", "lower_order_final": False}),
    "unipc3_bh2_full": ("unipc", {"order": 3, "solver_type": "bh2", "lower_order_final": False}),
    "dpm_solver3": ("dpm_solver", {"order": 3}),
    "dpm_solver2": ("dpm_solver", {"order": 2}),
    "dpm_solver++": ("dpm_solver++", {}),
    "edm": ("edm", {}),
}
_CHUNK = 256
_PURPOSES = {"fit": 1, "eval": 2, "reference": 3, "figure": 4}
_LABELS = 1000  # offset of the class-label streams' SeedSequence tag from the noise streams'


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


def settings(defaults: dict[str, dict], profile: str, **given) -> dict:
    """Resolve a notebook's parameters: the profile's defaults, overridden by every parameter given (not None).

    ``defaults`` maps each profile to its parameter values; a parameter the profile table does not know is an
    error that names the known ones.
    """
    check_profile(profile)
    table = dict(defaults[profile])
    unknown = sorted(set(given) - set(table))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; this notebook takes {sorted(table)}")
    for name, value in given.items():
        if value is not None:
            table[name] = value
    if "solvers" in table:
        for label in table["solvers"]:
            solver_spec(label)
    return {"profile": profile, **table}


def solver_spec(label: str) -> tuple[str, dict]:
    if label not in SOLVER_LABELS:
        raise ValueError(f"solver label must be one of {sorted(SOLVER_LABELS)}, got {label!r}")
    solver, options = SOLVER_LABELS[label]
    return solver, dict(options)


def noise(
    seed: int, purpose: str, n: int, shape: tuple[int, ...], start: int = 0, device="cpu"
) -> torch.Tensor:
    """Samples ``[start, start + n)`` of the standard normal stream ``(seed, purpose)``, float32.

    Each chunk of 256 samples has its own generator, seeded from ``(seed, purpose, chunk)`` through numpy's
    SeedSequence, so streams never overlap and do not depend on how they are batched.
    """
    if purpose not in _PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(_PURPOSES)}, got {purpose!r}")
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    first, last = start // _CHUNK, (start + n - 1) // _CHUNK
    chunks = []
    for j in range(first, last + 1):
        state = np.random.SeedSequence([int(seed), _PURPOSES[purpose], j]).generate_state(2, dtype=np.uint64)
        g = torch.Generator().manual_seed(int(state[0] % (2**63)))
        chunks.append(torch.randn(_CHUNK, *shape, generator=g))
    out = torch.cat(chunks)[start - first * _CHUNK : start - first * _CHUNK + n]
    return out.to(device)


def class_labels(seed: int, purpose: str, n: int, label_dim: int, start: int = 0) -> torch.Tensor:
    """Class labels ``[start, start + n)`` of the stream ``(seed, purpose)``, uniform over ``label_dim``
    classes (as EDM and guided-diffusion draw them), chunked like :func:`noise` and independent of it."""
    if purpose not in _PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(_PURPOSES)}, got {purpose!r}")
    first, last = start // _CHUNK, (start + n - 1) // _CHUNK
    chunks = []
    for j in range(first, last + 1):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _LABELS + _PURPOSES[purpose], j]))
        chunks.append(torch.from_numpy(rng.integers(0, label_dim, _CHUNK)))
    return torch.cat(chunks)[start - first * _CHUNK : start - first * _CHUNK + n]


def conditioned(den: Denoiser, seed: int, purpose: str, n: int, start: int = 0) -> Denoiser:
    """``den`` bound to the class labels of samples ``[start, start + n)`` of the stream ``(seed, purpose)``
    when it is class-conditional (ImageNet models), else ``den`` itself: sample ``i`` of a stream always
    has the same noise and the same class."""
    label_dim = int(den.info.get("label_dim") or 0)
    if not label_dim:
        return den
    return den.bind(class_labels=class_labels(seed, purpose, n, label_dim, start))


#: the network dtypes ``model_options`` may name (as a YAML or JSON parameter gives them)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model(name: str, device="cpu", model_options: dict | None = None) -> Denoiser:
    """``dode.zoo.load(name)`` with the options of ``model_options[name]`` (a mapping model name -> the
    options of :func:`dode.zoo.load`: ``path``, the clone of the authors' code, ...; one mapping serves
    every notebook of a paper run). Two options may also come as plain parameters: ``dtype``, the
    network's dtype (a torch dtype or a name of :data:`DTYPES`; half precision for the diffusers models),
    and ``channels_last=True``, the network's weights stored channels-last (faster convolutions on GPUs).
    Both change the network's rounding, so they are off unless asked for (book/gpu.md)."""
    from dode import zoo

    options = (model_options or {}).get(name) or {}
    if not isinstance(options, dict):
        raise ValueError(
            f"model_options must map model names to option mappings, e.g. {{{name!r}: {{'path': ...}}}}; "
            f"got {name!r}: {options!r}"
        )
    options = dict(options)
    dtype = options.pop("dtype", None)
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"model_options dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype.removeprefix("torch.")]
    channels_last = options.pop("channels_last", False)
    if channels_last not in (True, False, 0, 1):
        raise ValueError(f"model_options channels_last must be true or false, got {channels_last!r}")
    den = zoo.load(name, device=device, dtype=dtype, **options)
    if channels_last:
        if not isinstance(den.fn, torch.nn.Module):
            raise ValueError(f"channels_last needs a torch network, {name!r} is not one")
        den.fn.to(memory_format=torch.channels_last)
    return den


def precision_key(options: dict | None) -> dict:
    """The precision options of one model (its ``model_options`` entry) that change results (``dtype`` other
    than float32, ``channels_last``), for a results file's comparability key: cells computed in half
    precision never mix with float32 ones."""
    options = options or {}
    key = {}
    if options.get("dtype") not in (None, "float32", "torch.float32", torch.float32):
        key["dtype"] = str(options["dtype"]).removeprefix("torch.")
    if options.get("channels_last"):
        key["channels_last"] = 1
    return key


def sample_shape(den: Denoiser) -> tuple[int, int, int]:
    info = den.info
    try:
        return int(info["channels"]), int(info["resolution"]), int(info["resolution"])
    except KeyError as err:
        raise ValueError(f"the denoiser's info lacks {err}; load it through dode.zoo") from err


def make_metric(den: Denoiser, device="cpu", batch_size: int | None = None, fid_stats=None):
    """``(name, metric)``: FD in the digit classifier's features for the embedded models, Inception FID
    against the dataset's reference statistics (read from the folder ``fid_stats``, default
    ``$DODE_FID_STATS`` or ``data/fid_stats``) for the paper's models."""
    from dode import metrics

    reference = den.info.get("fid_reference", "fd")
    if reference == "fd":
        return "fd", metrics.FD(device=device, batch_size=batch_size or 1000)
    metric = metrics.FID(
        device=device, batch_size=batch_size or 100, reference=reference, stats_dir=fid_stats
    )
    return "fid", metric


#: what of a loaded model its numbers depend on (besides the sweep): recorded and compared in results files
_IDENTITY_KEYS = (
    "zoo_name",
    "checkpoint_sha256",
    "schedule",
    "prediction",
    "resolution",
    "channels",
    "label_dim",
    "ema",
    "use_fp16",
)


def model_record(den: Denoiser) -> dict:
    """What identifies a model in results files: its name, checkpoint content hash, schedule, ..."""
    return {"name": den.name, **{k: den.info[k] for k in _IDENTITY_KEYS if k in den.info}}


def identity(den: Denoiser, metric=None, **settings) -> dict:
    """A model's identity in a results file: :func:`model_record`, the metric's identity (hashes of the
    reference statistics and of the Inception weights or the FD classifier) and the model's own
    ``settings`` (e.g. its fitting batch size where models differ in it)."""
    out = model_record(den)
    if metric is not None:
        out["metric"] = metric.identity()
    if settings:
        out["settings"] = dict(settings)
    return out


def results_path(results_dir: str | Path, stem: str) -> Path:
    """The results file of notebook ``stem``."""
    return Path(results_dir) / f"{stem}.nc"


def open_store(
    results_dir: str | Path, stem: str, dims: dict, key: dict, params: dict, identities: dict[str, dict]
):
    """The results file of notebook ``stem``; ``identities``: model name -> :func:`identity`.

    Results of another profile or key, or of a model whose identity changed, are never mixed in (nor
    overwritten): the store refuses them with a message that says what changed."""
    from dode.companion.results import ResultStore, provenance

    key = {**key, "profile": params["profile"]}
    return ResultStore(
        results_path(results_dir, stem),
        dims,
        key,
        provenance(params["profile"], params, identities),
        identities=identities,
    )


def fit_lambdas(
    den: Denoiser,
    label: str,
    nfe: int,
    *,
    seed: int,
    K: int,
    B: int,
    shape: tuple[int, ...],
    variant: str = "d-ode",
    stages: str = "per_time",
    grid=None,
    teacher: str | None = None,
    fit: str = "ls",
    device="cpu",
    targets=None,
) -> tuple[Lambdas, float]:
    """Distill on the fitting batch of ``seed`` (B samples); returns the lambdas and the wall time.

    ``targets``: the teacher's states on this batch (:func:`dode.distill.teacher_targets`), to share one
    teacher run between variants; the wall time then excludes the teacher."""
    solver, options = solver_spec(label)
    fit_noise = noise(seed, "fit", B, shape, device=device)
    t0 = time.perf_counter()
    lam = distill(
        conditioned(den, seed, "fit", B),
        fit_noise,
        solver,
        nfe,
        K,
        grid=grid,
        teacher=teacher,
        variant=variant,
        stages=stages,
        fit=fit,
        seed=seed,
        teacher_run=targets,
        **options,
    )
    return lam, time.perf_counter() - t0


def sample_batches(
    den: Denoiser,
    label: str,
    nfe: int,
    *,
    seed: int,
    n_samples: int,
    batch_size: int,
    shape: tuple[int, ...],
    lambdas: Lambdas | None = None,
    grid=None,
    device="cpu",
    purpose: str = "eval",
    world: World = SINGLE,
    first: int = 0,
) -> Iterable[tuple[torch.Tensor, float]]:
    """Yield ``(samples, seconds)`` batch by batch: the evaluation samples ``[first, first + n_samples)``
    of ``seed``.

    The samples are cut into fixed batches of ``batch_size`` and the batches dealt to the ranks of
    ``world`` in turn (batch ``b`` to rank ``b mod size``), so no sample's batch depends on the number of
    processes (as EDM's ``generate.py`` deals its seeds)."""
    solver, options = solver_spec(label)
    end = first + n_samples
    for start in range(first + world.rank * batch_size, end, world.size * batch_size):
        n = min(batch_size, end - start)
        z = noise(seed, purpose, n, shape, start=start, device=device)
        t0 = time.perf_counter()
        x = sample(
            conditioned(den, seed, purpose, n, start), z, solver, nfe, grid=grid, lambdas=lambdas, **options
        )
        if x.is_cuda:
            torch.cuda.synchronize()
        yield x.float(), time.perf_counter() - t0


def sample_stats(den: Denoiser, metric, label: str, nfe: int, *, world: World = SINGLE, **kwargs):
    """Feature statistics of the evaluation samples (streamed in batches) and the pure sampling time.

    With several ranks, each samples its batches (:func:`sample_batches`) and computes their features where
    they are; rank 0 gathers one batch per rank at a time and accumulates them in batch order, so it adds
    exactly the batches a single process adds, in the same order, and the statistics are bit-identical.
    The seconds are summed over the ranks (device-seconds). Rank 0 gets the statistics, the others None."""
    from dode.metrics import FeatureStats

    stats, seconds = FeatureStats(), 0.0
    batches = iter(sample_batches(den, label, nfe, world=world, **kwargs))
    n_batches = -(-kwargs["n_samples"] // kwargs["batch_size"])
    for _ in range(-(-n_batches // world.size)):  # rounds of one batch per rank (the last may be short)
        batch = next(batches, None)
        mine = (metric.features(batch[0]), batch[1]) if batch is not None else (None, 0.0)
        for features, dt in world.gather(mine) or []:  # in rank order = batch order
            seconds += dt
            if features is not None:
                stats.update(features)
    return (stats if world.is_main else None), seconds


def _nfes_for(nfes, label: str) -> list[int]:
    if isinstance(nfes, dict):
        if label not in nfes:
            raise ValueError(f"nfes has no entry for solver {label!r} (it has {sorted(nfes)})")
        return list(nfes[label])
    return list(nfes)


#: fitted methods -> (D-ODE variant, stages): the variants of the method chapter's section 5 with one lambda
#: per landing time (our default), and the paper's D-ODE with a lambda on every stage (they differ only for EDM's Heun,
#: see dode.sampling.lambda_evaluations)
FITTED_METHODS = {
    **{v: (v, "per_time") for v in VARIANTS},
    "d-ode-per-stage": ("d-ode", "per_stage"),
    "d-ode-joint": ("d-ode", "per_time"),
}
#: fitted methods whose lambdas come from the joint fit (dode.joint) whatever the sweep's ``fit``
JOINT_METHODS = ("d-ode-joint",)
#: methods that sample with one constant lambda for every evaluation, chosen by grid search (method chapter,
#: section 5), and the prediction type their transform acts in: Fixed-D-DDIM on the model's own outputs (Eq. 10 with
#: a constant), LA-DDIM's lookahead on the data predictions (Zhang et al. 2023)
CONSTANT_METHODS = {"fixed": "native", "lookahead": "x0"}
#: extra sweep dimensions a sweep may add: the distillation's K and B (Tab. 3), a constant lambda (Tab. 4)
GRID_DIMS = ("K", "B", "lambda_value")
#: the grid dimensions each kind of method depends on. A method is computed once per value of these and
#: stored at every point of the other grid dimensions (e.g. the base solver at every K, a reference line)
_DEPENDS = {"base": (), "fitted": ("K", "B"), "constant": ("lambda_value",)}


def method_kind(method: str) -> str:
    """``base`` (the plain solver), ``fitted`` (a D-ODE variant distilled per seed) or ``constant``."""
    if method == "base":
        return "base"
    if method in FITTED_METHODS:
        return "fitted"
    if method in CONSTANT_METHODS:
        return "constant"
    raise ValueError(
        f"methods must be 'base', a fitted D-ODE method {tuple(FITTED_METHODS)} or a constant-lambda method "
        f"{tuple(CONSTANT_METHODS)}, got {method!r}"
    )


def one_at_a_time(K_values, B_values, K: int, B: int) -> list[dict]:
    """Tab. 3's design: K varies with B fixed at ``B``, and B varies with K fixed at ``K`` (not the full
    product); the point ``(K, B)`` appears once."""
    points = [{"K": int(k), "B": int(B)} for k in K_values]
    points += [{"K": int(K), "B": int(b)} for b in B_values if int(b) != int(B) or int(K) not in K_values]
    return points


def _check_points(points, methods) -> list[dict]:
    points = [dict(p) for p in points] or [{}]
    names = set(points[0])
    for p in points:
        if set(p) != names:
            raise ValueError(
                f"every sweep point must set the same dimensions, got {sorted(p)} and {sorted(names)}"
            )
    unknown = sorted(names - set(GRID_DIMS))
    if unknown:
        raise ValueError(f"sweep points may set {GRID_DIMS}, got {unknown}")
    if any(method_kind(m) == "constant" for m in methods) and "lambda_value" not in names:
        raise ValueError(f"methods {tuple(CONSTANT_METHODS)} need lambda_value in the sweep points")
    return points


def same_as_per_time(method: str, label: str, nfe: int) -> bool:
    """A per-stage method on a solver none of whose stages share a landing time (every solver but EDM's
    Heun) fits and samples exactly what its per-time counterpart does (tested in test_distill)."""
    from dode.sampling import lambda_evaluations
    from dode.schedules import EDMSchedule
    from dode.solvers import make_plan

    if FITTED_METHODS.get(method, (None, None))[1] != "per_stage":
        return False
    solver, options = solver_spec(label)
    return all(lambda_evaluations(make_plan(EDMSchedule(), solver, nfe, None, options)))


def method_nfes(method: str, label: str, nfes, joint_nfes=None) -> list[int]:
    """The NFEs at which ``method`` runs for solver ``label``: ``nfes`` (a list, or a dict solver label ->
    list), and for the joint-fit methods (:data:`JOINT_METHODS`) only those of them also in ``joint_nfes``
    (same forms; None: all). The cells a method skips stay NaN in the results file."""
    own = _nfes_for(nfes, label)
    if method not in JOINT_METHODS or joint_nfes is None:
        return own
    allowed = set(_nfes_for(joint_nfes, label))
    return [n for n in own if n in allowed]


def _work_units(solvers, nfes, seeds, methods, points, joint_nfes=None):
    """``(cell, method, parameters, points)``: one sampling run each, stored at all its points."""
    units = []
    for label in solvers:
        for nfe in _nfes_for(nfes, label):
            for seed in seeds:
                for method in methods:
                    if nfe not in method_nfes(method, label, nfes, joint_nfes):
                        continue  # a joint fit the sweep skips at this NFE (its cells stay NaN)
                    if same_as_per_time(method, label, nfe):
                        continue  # identical to the per-time method by construction: not recomputed
                    depends = [d for d in _DEPENDS[method_kind(method)] if d in points[0]]
                    groups: dict[tuple, list[dict]] = {}
                    for p in points:
                        groups.setdefault(tuple(p[d] for d in depends), []).append(p)
                    for key, pts in groups.items():
                        units.append(
                            (
                                {"solver": label, "nfe": nfe, "seed": seed},
                                method,
                                dict(zip(depends, key)),
                                pts,
                            )
                        )
    return units


def quality_sweep(
    store,
    den: Denoiser,
    metric,
    metric_name: str,
    *,
    solvers: list[str],
    nfes,
    seeds: list[int],
    methods: list[str],
    K: int,
    B: int,
    n_samples: int,
    batch_size: int,
    points=({},),
    grid=None,
    teacher: str | None = None,
    fit: str = "ls",
    joint_nfes=None,
    device="cpu",
    progress: bool = True,
    world: World = SINGLE,
) -> None:
    """Fill ``store`` with the sample quality of every (solver, method, NFE, seed[, point]); skip finished cells.

    ``points`` lists the values of the extra sweep dimensions (:data:`GRID_DIMS`), e.g.
    :func:`one_at_a_time` for K and B or ``[{"lambda_value": c}, ...]`` for a grid search; by default there
    are none. A D-ODE variant (``methods``: see :func:`method_kind`) is fitted on the seed's fitting batch
    with the point's K and B (else ``K``, ``B``) and its parameters stored (``lambdas``, ``fit_seconds``);
    variants fitted with the same K and B share one teacher run (``teacher``: a solver, None for DDIM, or
    ``paper`` for the paper's teachers, :func:`teacher_of`). A constant-lambda method samples with the
    point's ``lambda_value``. Every method samples the seed's evaluation noise (the same for all methods and
    points) and its metric is stored (``<metric_name>``, ``sample_seconds``). A method that does not depend
    on a grid dimension is computed once and stored at each of its values. The joint-fit methods run only at
    the NFEs also in ``joint_nfes`` (None: all; :func:`method_nfes`): each costs several greedy fits. Each
    finished unit is written at once, so an interrupted sweep resumes.

    With several ranks (``world``, see :mod:`dode.companion.distributed`) every rank runs this loop over the
    same units; rank 0 alone holds ``store`` (the others pass None): it decides which units are done, fits
    the lambdas once (or reads them back) and broadcasts them, and computes and writes the metric from the
    features every rank gathers to it (:func:`sample_stats`).
    """
    for m in methods:
        method_kind(m)
    points = _check_points(points, methods)
    shape = sample_shape(den)
    units = _work_units(solvers, nfes, seeds, methods, points, joint_nfes)
    teachers: dict[tuple, tuple] = {}  # (solver, nfe, seed, K, B) -> teacher run, shared by the variants
    bar = progress_bar(units, desc="runs", disable=not (progress and world.is_main))
    for cell, method, params, pts in bar:
        cells = [{**cell, "method": method, **p} for p in pts]
        if world.broadcast(world.is_main and all(store.has(metric_name, **c) for c in cells)):
            continue
        bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in {**cell, "method": method, **params}.items()))
        kind, lam = method_kind(method), None
        cell_teacher = teacher_of(cell["solver"], teacher)
        if kind == "fitted":
            # fitted once, on rank 0, and broadcast: every rank samples with the same lambdas
            fitted = None
            if world.is_main:
                fitted = _unit_lambdas(
                    store,
                    den,
                    cell,
                    method,
                    cells,
                    params,
                    K,
                    B,
                    shape,
                    grid,
                    cell_teacher,
                    _method_fit(method, fit),
                    device,
                    teachers,
                )
            lam = world.broadcast(fitted)
        elif kind == "constant":
            lam = Lambdas.constant_value(float(params["lambda_value"]), space=CONSTANT_METHODS[method])
        stats, secs = sample_stats(
            den,
            metric,
            cell["solver"],
            cell["nfe"],
            seed=cell["seed"],
            n_samples=n_samples,
            batch_size=batch_size,
            shape=shape,
            lambdas=lam,
            grid=grid,
            device=device,
            world=world,
        )
        if world.is_main:
            value = metric(stats)
            with store.together():
                for c in cells:
                    store.put("sample_seconds", secs, **c)
                    store.put(metric_name, value, **c)


def _unit_lambdas(store, den, cell, method, cells, params, K, B, shape, grid, teacher, fit, device, teachers):
    """The lambdas of a fitted unit: read back from ``store``, or fitted (sharing the cell's teacher run with
    the other variants through ``teachers``) and stored at every point of the unit."""
    k_fit, b_fit = int(params.get("K", K)), int(params.get("B", B))
    if store.has("lambdas", **cells[0]):
        return _stored_lambdas(store, den, cells[0], k_fit, b_fit, grid, teacher, fit)
    tkey = (cell["solver"], cell["nfe"], cell["seed"], k_fit, b_fit)
    if tkey not in teachers:
        teachers.clear()  # only the current cell's teacher runs are kept
        teachers[tkey] = _teacher_run(den, cell, k_fit, b_fit, shape, grid, teacher, device)
    targets, teacher_secs = teachers[tkey]
    lam, secs = fit_lambdas(
        den,
        cell["solver"],
        cell["nfe"],
        seed=cell["seed"],
        K=k_fit,
        B=b_fit,
        shape=shape,
        variant=FITTED_METHODS[method][0],
        stages=FITTED_METHODS[method][1],
        grid=grid,
        teacher=teacher,
        fit=fit,
        device=device,
        targets=targets,
    )
    with store.together():
        for c in cells:  # the fit's cost includes its (shared) teacher run
            store.put("lambdas", lam.values, extra_dims=_lambda_dims(lam), **c)
            store.put("fit_seconds", secs + teacher_secs, **c)
    return lam


#: the paper's teachers (Supp. 11): iPNDM and DEIS teach themselves, every other solver is taught by DDIM
PAPER_TEACHERS = {"ipndm": "ipndm", "deis": "deis"}


def teacher_of(label: str, teacher: str | None) -> str | None:
    """The teacher solver of ``label`` under a sweep's ``teacher``: a solver name (None: DDIM), or ``paper``
    for :data:`PAPER_TEACHERS` (a solver teaching itself shares its options, e.g. DEIS's order)."""
    if teacher != "paper":
        return teacher
    return PAPER_TEACHERS.get(solver_spec(label)[0], "ddim")


def _method_fit(method: str, fit: str) -> str:
    return "joint" if method in JOINT_METHODS else fit


def _teacher_run(den, cell, K, B, shape, grid, teacher, device):
    """The teacher states of a (solver, NFE, seed) cell's fitting batch, and the seconds they took."""
    from dode.distill import teacher_targets
    from dode.solvers import make_plan

    solver, options = solver_spec(cell["solver"])
    plan = make_plan(den.schedule, solver, cell["nfe"], grid, options)
    fit_noise = noise(cell["seed"], "fit", B, shape, device=device)
    t0 = time.perf_counter()
    targets = teacher_targets(
        conditioned(den, cell["seed"], "fit", B), fit_noise, plan, K, teacher=teacher or "ddim"
    )
    return targets, time.perf_counter() - t0


def _lambda_dims(lam: Lambdas) -> dict:
    n, p = lam.values.shape
    return {"evaluation": list(range(n)), "param": list(range(p))}


def _stored_lambdas(store, den, cell, K, B, grid, teacher, fit) -> Lambdas:
    """Rebuild the Lambdas of a cell from the store (fitting is not repeated on resume)."""
    from dode.grids import grid_key
    from dode.solvers import get_solver

    label, nfe = cell["solver"], cell["nfe"]
    solver, options = solver_spec(label)
    values = np.asarray(store.get("lambdas", **cell))
    rows = values[:nfe]
    width = max(1, int(np.max(np.sum(~np.isnan(rows), axis=1))))
    return Lambdas(
        rows[:, :width],
        solver=solver,
        nfe=nfe,
        grid=grid_key(grid),
        options=get_solver(solver).check_options(options),  # with the solver's defaults, as distill stores
        variant=FITTED_METHODS[cell["method"]][0],
        stages=FITTED_METHODS[cell["method"]][1],
        model=den.name,
        schedule=den.schedule.describe(),
        K=K,
        B=B,
        seed=cell["seed"],
        teacher=teacher or "ddim",
        fit=fit,
    )


def sweep_dims(solvers, nfes, methods, seeds, points=({},)) -> dict:
    all_nfes = sorted({n for lb in solvers for n in _nfes_for(nfes, lb)})
    dims = {"solver": list(solvers), "method": list(methods), "nfe": all_nfes, "seed": list(seeds)}
    for name in GRID_DIMS:
        values = [p[name] for p in points if name in p]
        if values:
            dims[name] = sorted(set(values))
    return dims


def sweep_points(cfg: dict) -> list[dict]:
    """The extra sweep points a notebook's parameters ask for: ``K_values``/``B_values`` (Tab. 3, varied one
    at a time around ``K``, ``B``) and ``lambda_values`` (a grid search, Tab. 4); ``[{}]`` for none."""
    points = [{}]
    if cfg.get("K_values") or cfg.get("B_values"):
        points = one_at_a_time(
            cfg.get("K_values") or [cfg["K"]], cfg.get("B_values") or [cfg["B"]], cfg["K"], cfg["B"]
        )
    if cfg.get("lambda_values"):
        values = [float(v) for v in cfg["lambda_values"]]
        if len(set(values)) != len(values):
            raise ValueError(f"lambda_values has repeated values: {values}")
        points = [{**p, "lambda_value": v} for p in points for v in values]
    return points


#: the sweep settings a model of a multi-model sweep may set for itself (``per_model``), e.g. the paper's
#: B = 25 for LSUN bedroom, or a smaller batch for a 256x256 model
PER_MODEL = ("K", "B", "n_samples", "batch_size")


def model_settings(cfg: dict, name: str) -> dict:
    """The sweep settings of model ``name``: ``cfg``'s, overridden by ``cfg["per_model"][name]``."""
    own = dict((cfg.get("per_model") or {}).get(name) or {})
    unknown = sorted(set(own) - set(PER_MODEL))
    if unknown:
        raise ValueError(f"per_model[{name!r}] may set {PER_MODEL}, got {unknown}")
    return {k: own.get(k, cfg[k]) for k in PER_MODEL}


def run_sweep(stem: str, cfg: dict, results_dir: str | Path, progress: bool = True, nproc: int = 1) -> Path:
    """Run (or resume) the quality sweep of notebook ``stem`` with resolved parameters ``cfg``.

    ``cfg`` needs ``solvers, nfes, seeds, methods, K, B, n_samples, batch_size, device`` and either ``model``
    (one model) or ``models`` (several: the file gets a ``model`` dimension, and ``per_model`` may set a
    model's own :data:`PER_MODEL` settings). It may set ``model_options`` (model name -> options of
    :func:`dode.zoo.load`), ``fid_stats`` (the folder of the FID reference statistics), ``grid``,
    ``teacher``, ``fit``, ``joint_nfes`` (:func:`method_nfes`), the extra sweep dimensions of :func:`sweep_points` (``K_values``, ``B_values``,
    ``lambda_values``) and ``tuning_seed``: a seed run like ``seeds`` (its own fitting batch and
    evaluation noise), on which a grid point is chosen before the methods are compared on ``seeds``
    (:func:`dode.companion.plots.best_constant`), so that the choice never sees the evaluation noise. Every model is loaded and its metric built before anything is computed, so a missing
    checkpoint or statistics file stops the run at once. After the cells, where ``cfg["floor"]`` is set, each
    model's noise floor at its sample count is stored as ``<metric>_floor`` (:func:`sweep_floor`). Returns the
    results file, from which the notebook draws its figures.

    ``nproc > 1`` runs the sweep in that many processes on this node: ``python -m dode.sweep`` under torchrun,
    as a subprocess whose progress goes to the terminal, not into a notebook (book/gpu.md). Under torchrun
    (that command) each process is one rank of the sweep; the results do not depend on their number.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive number of processes, got {nproc!r}")
    if "models" in cfg and not isinstance(cfg["models"], list | tuple):
        raise ValueError(f"models must be a list of dode.zoo names, got {cfg['models']!r}")
    names = list(cfg["models"]) if "models" in cfg else [cfg["model"]]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"models must name distinct dode.zoo models, got {names}")
    if nproc > 1 and not under_torchrun():
        from dode.companion.distributed import launch

        launch(stem, cfg, results_dir, nproc)
        return results_path(results_dir, stem)
    tuning = [] if cfg.get("tuning_seed") is None else [int(cfg["tuning_seed"])]
    if set(tuning) & {int(s) for s in cfg["seeds"]}:
        raise ValueError(
            f"tuning_seed must not be one of seeds (the evaluation's), got {tuning[0]} and {cfg['seeds']}"
        )
    seeds = [int(s) for s in cfg["seeds"]] + tuning
    world = join(cfg["device"])  # under torchrun: this process's rank, its process group open
    device = world.device(cfg["device"])
    loaded = {}
    for name in names:
        den = load_model(name, device=device, model_options=cfg.get("model_options"))
        loaded[name] = (den, *make_metric(den, device=device, fid_stats=cfg.get("fid_stats")))
    metric_names = {name: m for name, (_, m, _) in loaded.items()}
    if len(set(metric_names.values())) > 1:
        raise ValueError(f"the models of one sweep must share a metric, got {metric_names}")
    metric_name = next(iter(metric_names.values()))
    points = _check_points(sweep_points(cfg), cfg["methods"])
    dims = sweep_dims(cfg["solvers"], cfg["nfes"], cfg["methods"], seeds, points)
    if "models" in cfg:
        dims = {"model": names, **dims}
    key = {k: cfg.get(k) for k in ("K", "B", "n_samples", "grid", "teacher", "fit")} | {"metric": metric_name}
    precision = {n: precision_key((cfg.get("model_options") or {}).get(n)) for n in names}
    if any(precision.values()):  # absent by default: files of float32 runs keep their key
        key["precision"] = {n: p for n, p in precision.items() if p}
    own = {name: model_settings(cfg, name) for name in names}
    identities = {
        name: identity(den, metric, **{k: v for k, v in own[name].items() if k in ("K", "B", "n_samples")})
        for name, (den, _, metric) in loaded.items()
    }
    # rank 0 alone reads and writes the results file
    store = open_store(results_dir, stem, dims, key, cfg, identities) if world.is_main else None
    for name, (den, _, metric) in loaded.items():
        quality_sweep(
            store.at(model=name) if store is not None and "models" in cfg else store,
            den,
            metric,
            metric_name,
            **{k: cfg[k] for k in ("solvers", "nfes", "methods")},
            seeds=seeds,
            **own[name],
            points=points,
            grid=cfg.get("grid"),
            teacher=cfg.get("teacher"),
            fit=cfg.get("fit", "ls"),
            joint_nfes=cfg.get("joint_nfes"),
            device=device,
            progress=progress,
            world=world,
        )
    # after the cells: the floor is read by the figures only, and a notebook running beside this one may be
    # computing it (the cache's lock then waits for it instead of computing it twice)
    sweep_floor(
        store,
        {name: (den, metric) for name, (den, _, metric) in loaded.items()},
        metric_name,
        cfg,
        results_dir,
        seeds=seeds,
        device=device,
        own=own,
        world=world,
    )
    return results_path(results_dir, stem)


# ----------------------------------------------------------------------------------------------------------
# The noise floor: the metric that a converged sampler scores at a sweep's sample size
#
# FD and FID compare the mean and covariance of N samples' features with those of a reference set. Estimated
# from finite N they are biased upward and vary from one evaluation set to the next, so even exact samples of
# the model's probability-flow ODE -- the limit every solver of a sweep approaches as its NFE grows -- score
# above zero, by an amount that shrinks with N. That value, the *noise floor*, is what "converged" reads as
# at a figure's sample size: a solver's distance from the floor, not from zero, is its error, and the
# floor's spread over seeds is the size of the evaluation-set noise (page 00, "The metric").
#
# The floor is measured with the model's reference sampler (reference_sampler): DDIM with many steps on VP
# (noise-prediction) models, EDM's Heun sampler with many evaluations on EDM models, their counts set by a
# sweep's `floor` setting (dode.companion.protocols.FLOOR), where more steps no longer move the FD beyond its
# spread over seeds. It samples each seed's *evaluation* noise, which every method of the sweep samples for
# that seed, so a cell and the floor of its seed are paired.

#: the folder of the floor caches, under a results directory
FLOOR_DIR = "floors"
#: reference solver label -> the models it is the reference sampler of
_REFERENCE = {"ddim": "VP (noise-prediction) models", "edm": "EDM-schedule models"}


def check_floor(floor) -> dict[str, int]:
    """The ``floor`` setting checked: ``{"ddim": steps, "edm": evaluations}`` (the reference samplers of VP
    and EDM models; either may be left out), or empty / None for no floor (returned as ``{}``)."""
    if not floor:
        return {}
    message = (
        "floor must map 'ddim' (VP models: DDIM's steps) and/or 'edm' (EDM models: Heun's network "
        f"evaluations, odd) to a positive number of network evaluations, or be empty for no floor; got {floor!r}"
    )
    if not isinstance(floor, dict) or not set(floor) <= set(_REFERENCE):
        raise ValueError(message)
    out = {}
    for label, nfe in floor.items():
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1 or (label == "edm" and nfe % 2 == 0):
            raise ValueError(message)
        out[label] = int(nfe)
    return out


def reference_sampler(den: Denoiser, floor) -> tuple[str, int]:
    """``(solver label, NFE)`` of ``den``'s reference sampler under the ``floor`` setting: DDIM on VP models,
    EDM's Heun sampler on EDM-schedule models."""
    label = "edm" if isinstance(den.schedule, EDMSchedule) else "ddim"
    floor = check_floor(floor)
    if label not in floor:
        raise ValueError(
            f"floor sets no reference sampler for {den.name} ({_REFERENCE[label]}: key {label!r}); got {floor!r}"
        )
    return label, floor[label]


def sampler_description(label: str, nfe: int) -> str:
    """``DDIM with 200 steps`` / ``EDM's Heun sampler with 35 evaluations``: what a caption says."""
    if label == "edm":
        return f"EDM's Heun sampler with {nfe} evaluations"
    return f"DDIM with {nfe} steps"


def floor_path(results_dir: str | Path, den: Denoiser, label: str, nfe: int) -> Path:
    """The cache of ``den``'s floors with the reference sampler ``(label, nfe)``, named by the model, the first
    8 hex digits of its checkpoint's sha256 and the sampler (the file's attributes hold the full identity)."""
    sha = str(den.info.get("checkpoint_sha256") or "nosha")[:8]
    return Path(results_dir) / FLOOR_DIR / f"{den.name}-{sha}-{label}{nfe}.nc"


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``<path>.lock`` (created if absent) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def noise_floor(
    den: Denoiser,
    metric,
    metric_name: str,
    *,
    floor,
    n_samples,
    seeds,
    batch_size: int,
    results_dir: str | Path,
    device="cpu",
    precision: dict | None = None,
    world: World = SINGLE,
):
    """The noise floor of ``den`` at each count of ``n_samples`` (an int or a list) and seed: ``metric`` of
    the first n evaluation samples of the seed drawn by the reference sampler (:func:`reference_sampler`
    under ``floor``), as an xarray DataArray over ``n_samples x seed`` on rank 0 (None on the others).

    Each (model checkpoint, reference sampler, sample count, seed) is computed once, whichever notebook asks
    first: the values are cached in :func:`floor_path` (under ``results_dir``), a ResultStore over
    ``n_samples x seed``, written atomically (temp file, then ``os.replace``), that records the model's
    identity (:func:`identity`: checkpoint hash, schedule, the metric's weights and reference statistics; and
    ``precision``, the model's :func:`precision_key`) and refuses to be read with another one. The counts of
    one seed are prefixes of one noise stream, so one run of the largest missing count gives every smaller
    one (the statistics of the first n samples, accumulated segment by segment). A lock file beside the
    cache keeps two notebooks that run at once from computing the same floor twice: the second waits, then
    reads the first one's values. With several ranks (``world``) rank 0 holds the cache and its lock, and
    every rank samples its share of the batches (:func:`sample_stats`)."""
    from dode.companion.results import ResultStore

    label, nfe = reference_sampler(den, floor)
    counts = sorted({int(n) for n in ([n_samples] if isinstance(n_samples, int) else n_samples)})
    seeds = [int(s) for s in seeds]
    if not counts or counts[0] < 2 or not seeds:
        raise ValueError(
            f"n_samples must be counts of at least 2 samples and seeds a non-empty list, got {counts} and {seeds}"
        )
    path = floor_path(results_dir, den, label, nfe)
    shape = sample_shape(den)
    with _locked(path) if world.is_main else contextlib.nullcontext():
        cache, todo = None, None
        if world.is_main:
            cache = ResultStore(
                path,
                {"n_samples": counts, "seed": seeds},
                {"sampler": f"{label}:{nfe}", "noise": "eval", "metric": metric_name},
                {"description": f"noise floor: {metric_name.upper()} of {sampler_description(label, nfe)}"},
                identities={den.name: identity(den, metric, **(precision or {}))},
            )
            todo = {s: [n for n in counts if not cache.has(metric_name, n_samples=n, seed=s)] for s in seeds}
        todo = world.broadcast(todo)
        for seed, missing in todo.items():
            stats, seconds, done, values = None, 0.0, 0, {}
            for n in missing:  # each segment extends the statistics of the previous count
                segment, secs = sample_stats(
                    den,
                    metric,
                    label,
                    nfe,
                    seed=seed,
                    n_samples=n - done,
                    batch_size=batch_size,
                    shape=shape,
                    device=device,
                    world=world,
                    first=done,
                )
                seconds, done = seconds + secs, n
                if world.is_main:
                    stats = segment if stats is None else stats.merge(segment)
                    values[n] = (metric(stats), seconds)
            if values:
                with cache.together():
                    for n, (value, secs) in values.items():
                        cache.put(metric_name, value, n_samples=n, seed=seed)
                        cache.put("sample_seconds", secs, n_samples=n, seed=seed)
        if not world.is_main:
            return None
        out = cache.dataset()[metric_name].sel({"n_samples": counts, "seed": seeds}).load()
        out.attrs.update(sampler=f"{label}:{nfe}", description=sampler_description(label, nfe))
        return out


def store_floor(store, metric_name: str, values, model: str | None = None) -> None:
    """Put a floor over seeds (``values``: :func:`noise_floor`'s array at one sample count) into a results
    file as ``<metric>_floor`` at each ``seed`` (and ``model``, in files with a model dimension). Cells that
    already hold the same value are left alone, so a rerun does not rewrite the file."""
    var = f"{metric_name}_floor"
    with store.together():
        for seed, value in zip(values.coords["seed"].values.tolist(), values.values.tolist(), strict=True):
            cell = ({"model": model} if model is not None else {}) | {"seed": seed}
            if store.has(var, **cell) and float(store.get(var, **cell)) == float(value):
                continue
            store.put(var, value, **cell)


def describe_floor(store, metric_name: str, records: dict[str, tuple[str, int, int]]) -> None:
    """The attributes of ``<metric>_floor``: ``records`` maps each model to ``(label, nfe, n_samples)``. One
    sampler, one count and one description are plain attributes; several (a file with models of both kinds,
    or per-model sample counts) are JSON mappings model -> value, so that a figure's panel can name its own
    model's (:func:`dode.companion.plots.floor_band`)."""
    samplers = {m: f"{label}:{nfe}" for m, (label, nfe, _) in records.items()}
    counts = {m: int(n) for m, (_, _, n) in records.items()}
    descriptions = {
        m: f"noise floor: {metric_name.upper()} of {counts[m]:,} samples of {sampler_description(label, nfe)} "
        "(a converged sampler), per seed"
        for m, (label, nfe, _) in records.items()
    }

    def one_or_json(values: dict):
        return next(iter(values.values())) if len(set(values.values())) == 1 else json.dumps(values)

    store.describe(
        f"{metric_name}_floor",
        description=one_or_json(descriptions),
        n_samples=one_or_json(counts),
        sampler=one_or_json(samplers),
    )


def sweep_floor(
    store, loaded: dict, metric_name: str, cfg: dict, results_dir, *, seeds, device, own=None, world=SINGLE
):
    """Store the noise floor of every model of a sweep in its results file ``store`` (rank 0's; None on the
    other ranks), at the sweep's sample count and ``seeds``; nothing if ``cfg["floor"]`` is empty.
    ``loaded``: model name -> ``(denoiser, metric)``; ``own``: model name -> its ``n_samples`` and
    ``batch_size`` (default ``cfg``'s). The floor has a ``model`` dimension where ``store`` has one."""
    floor = check_floor(cfg.get("floor"))
    if not floor:
        return
    records = {}
    for name, (den, metric) in loaded.items():
        settings = (own or {}).get(name) or cfg
        values = noise_floor(
            den,
            metric,
            metric_name,
            floor=floor,
            n_samples=settings["n_samples"],
            seeds=seeds,
            batch_size=settings["batch_size"],
            results_dir=results_dir,
            device=device,
            precision=precision_key((cfg.get("model_options") or {}).get(name)),
            world=world,
        )
        if world.is_main:
            model = name if "model" in store.coords else None
            store_floor(store, metric_name, values.sel({"n_samples": settings["n_samples"]}), model=model)
        records[name] = (*reference_sampler(den, floor), settings["n_samples"])
    if world.is_main:
        describe_floor(store, metric_name, records)
