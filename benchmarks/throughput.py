"""Benchmark: network evaluations per second of a zoo model, and what the paper profile's sweeps would cost.

Times DDIM sampling runs (``dode.sample``, the sweeps' own loop) of ``--batch`` samples at ``--nfe`` steps on
``--device`` and reports evaluations per second (samples x NFE / seconds, the best of ``--repeats`` runs after
one warm-up run). Then, for every sweep notebook of the ``paper`` profile, it prints the estimated wall time
at that rate from :func:`dode.companion.protocols.network_evaluations`, on one GPU and on ``--gpus`` GPUs.

The estimates include FID (:func:`dode.companion.protocols.metric_work` counts its work): the Frechet
distance of every cell, timed here on 2048-d statistics on ``--device`` (:func:`dode.metrics.frechet_distance`
there), and Inception's features of every sample, timed here at ``--batch`` images of the model's resolution
when pytorch-fid's Inception weights are in the torch hub cache (else left out, and said so).

The estimate on N GPUs divides the sampling and the features by N: the sharded sweep (``python -m dode.sweep``
under torchrun) splits every sampling run over the ranks, while the fits, about 1 % of the evaluations, and
the Frechet distances run on rank 0 alone (counted undivided). The rate is the measured model's; a notebook
whose paper model is another network (its name is printed beside it) runs at that network's rate instead.

``--random-weights`` builds the model's real architecture with random weights instead of loading the
checkpoint (``ddpm-cifar10``: the UNet2DModel of google/ddpm-cifar10-32, 35.7M parameters), so the rate can
be measured before any download. ``--dtype`` and ``--channels-last`` measure what half precision and
channels-last weights gain (book/gpu.md says what they change)::

    python benchmarks/throughput.py --model digits-eps --batch 500 --device cpu
    python benchmarks/throughput.py --model ddpm-cifar10 --random-weights --batch 500 --device cuda --gpus 8
    python benchmarks/throughput.py --model ddpm-cifar10 --random-weights --batch 500 --device cuda --dtype float16 --channels-last
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from frechet import statistics  # benchmarks/frechet.py: the same statistics its comparison times

import dode
from dode import metrics, zoo
from dode.companion.experiments import DTYPES, load_model
from dode.companion.protocols import PROTOCOLS, metric_work, network_evaluations
from dode.companion.sweep import SWEEPS

#: the UNet of google/ddpm-cifar10-32 (its hub config.json), for --random-weights
DDPM_CIFAR10_UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=32,
    mid_block_scale_factor=1,
    act_fn="silu",
    time_embedding_type="positional",
    center_input_sample=False,
)
#: its scheduler (DDPM's linear betas, T = 1000)
DDPM_CIFAR10_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}
RANDOM_WEIGHTS = {"ddpm-cifar10": (DDPM_CIFAR10_UNET, DDPM_CIFAR10_SCHEDULER)}


def load(model: str, device: str, random_weights: bool, folder: Path, **options) -> dode.Denoiser:
    """The zoo model, or (``random_weights``) its architecture at random weights, loaded through the zoo
    from a diffusers folder written into ``folder``; ``options`` as a sweep's ``model_options``."""
    if not random_weights:
        return load_model(model, device=device, model_options={model: options})
    if model not in RANDOM_WEIGHTS:
        raise SystemExit(f"--random-weights knows {sorted(RANDOM_WEIGHTS)}, not {model!r}")
    import json

    from diffusers import UNet2DModel

    unet_config, scheduler_config = RANDOM_WEIGHTS[model]
    torch.manual_seed(0)
    UNet2DModel(**unet_config).save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler_config))
    return load_model(model, device=device, model_options={model: {**options, "path": str(folder)}})


def evaluations_per_second(den: dode.Denoiser, batch: int, nfe: int, repeats: int, device: str) -> float:
    shape = (int(den.info["channels"]), int(den.info["resolution"]), int(den.info["resolution"]))
    z = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up (allocations, kernel selection)
        t0 = time.perf_counter()
        with torch.no_grad():
            dode.sample(den, z, "ddim", nfe)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return batch * nfe / best


def frechet_seconds(device: str, repeats: int) -> float:
    """Wall time of one FID's Frechet distance (2048-d statistics) on ``device``, the best of ``repeats``."""
    a, b = (
        statistics(metrics.FID.DIM, metrics.FID.DIM, seed=0),
        statistics(metrics.FID.DIM, metrics.FID.DIM, 1),
    )
    cuda = torch.device(device).type == "cuda"
    best = float("inf")
    for i in range(repeats + cuda):  # on a GPU the first run warms up (cuSOLVER's initialisation)
        t0 = time.perf_counter()
        metrics.frechet_distance(a, b, device=device)
        if cuda:
            torch.cuda.synchronize()
        if i or not cuda:
            best = min(best, time.perf_counter() - t0)
    return best


def inception_images_per_second(den: dode.Denoiser, batch: int, repeats: int, device: str) -> float | None:
    """Images per second of FID's Inception features at the model's resolution; None without its weights."""
    if not metrics.inception_weights_path().is_file():
        return None
    fid = metrics.FID(device=device, batch_size=batch)
    shape = (int(den.info["channels"]), int(den.info["resolution"]), int(den.info["resolution"]))
    images = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up
        t0 = time.perf_counter()
        fid.features(images)  # returns on the CPU: synchronised
        if i:
            best = min(best, time.perf_counter() - t0)
    return batch / best


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:10.1f} h" if seconds >= 360 else f"{seconds / 60:10.1f} min"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="digits-eps", choices=sorted(zoo.available()))
    parser.add_argument("--random-weights", action="store_true", help="the architecture at random weights")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gpus", type=int, default=8, help="the N of the N-GPU estimate")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="the network's dtype")
    parser.add_argument("--channels-last", action="store_true", help="the network's weights channels-last")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    for name in ("batch", "nfe", "repeats", "gpus"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="dode-throughput-") as tmp:
        options = {"dtype": args.dtype, "channels_last": args.channels_last}
        den = load(args.model, args.device, args.random_weights, Path(tmp), **options)
        rate = evaluations_per_second(den, args.batch, args.nfe, args.repeats, args.device)
        parameters = sum(p.numel() for p in den.fn.parameters()) if isinstance(den.fn, torch.nn.Module) else 0
    weights = "random weights" if args.random_weights else "its weights"
    weights += f", {den.dtype}".replace("torch.", "") + (", channels-last" if args.channels_last else "")
    shown = _significant(rate)
    print(
        f"{args.model} ({weights}, {parameters / 1e6:.2f}M parameters) on {args.device}, batch {args.batch}, "
        f"DDIM NFE {args.nfe}, {torch.get_num_threads()} CPU threads: {shown} network evaluations/s"
    )
    frechet = frechet_seconds(args.device, args.repeats)
    inception = inception_images_per_second(den, args.batch, args.repeats, args.device)
    print(f"FID: {frechet:.3g} s per Frechet distance of 2048-d statistics on {args.device}")
    if inception is None:
        print(
            f"FID: Inception's features not timed, no weights at {metrics.inception_weights_path()}: left out"
        )
    else:
        print(f"FID: {_significant(inception)} Inception images/s at batch {args.batch}")
    print(f"\nestimated wall time of the paper profile at {shown} evaluations/s per device, FID included")
    one, many = "1 device", f"{args.gpus} devices"
    print(
        f"{'notebook':22s} {'paper models':24s} {'evaluations':>14s} {'FID cells':>9s} {one:>13s} {many:>13s}"
    )
    for stem in SWEEPS:
        table = PROTOCOLS[stem]["paper"]
        models = table.get("models") or [table["model"]]
        model = models[0] + (f"+{len(models) - 1}" if len(models) > 1 else "")  # the first, and how many more
        try:
            n, work = network_evaluations(stem, "paper"), metric_work(stem, "paper")
        except ValueError:  # a sweep over K, B or a constant lambda: not counted there
            print(f"{stem:22s} {model:24s} {'(not counted)':>14s}")
            continue
        shared = n / rate + (work["images"] / inception if inception else 0.0)  # split over the devices
        alone = work["distances"] * frechet  # rank 0's
        print(
            f"{stem:22s} {model:24s} {n:14,d} {work['distances']:9,d} {_hours(shared + alone)} "
            f"{_hours(shared / args.gpus + alone)}"
        )


def _significant(rate: float) -> str:
    """The rate to three significant figures: a slow device (a CPU on the paper's U-Net runs at about two
    evaluations/s) would otherwise print a rate a third off the one its estimates use."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


if __name__ == "__main__":
    main()
