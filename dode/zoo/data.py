"""The embedded dataset: scikit-learn's 8x8 handwritten digits, scaled to [-1, 1].

It ships inside the scikit-learn wheel, so the companion can train and evaluate real diffusion models with
no download. The train/held-out split is fixed by a seeded permutation and recorded in
``dode/assets/digits_split.json`` (checked against the code on load, so it can never drift silently).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dode.files import asset

__all__ = ["Digits", "load_digits", "SPLIT_SEED", "N_HELD_OUT", "SPLIT_RECORD"]

SPLIT_SEED = 0
N_HELD_OUT = 297  # 1,797 images: 1,500 train, 297 held out
SPLIT_RECORD = asset("digits_split.json")


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor  # (N, 1, 8, 8) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64
    indices: np.ndarray  # positions in sklearn's load_digits order


def _split_indices() -> dict[str, list[int]]:
    perm = np.random.default_rng(SPLIT_SEED).permutation(1797)
    return {"train": sorted(perm[N_HELD_OUT:].tolist()), "held_out": sorted(perm[:N_HELD_OUT].tolist())}


def _check_recorded_split(split: dict[str, list[int]]) -> None:
    path = SPLIT_RECORD
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    if recorded["train"] != split["train"] or recorded["held_out"] != split["held_out"]:
        raise RuntimeError(
            f"the digits split computed by dode.zoo.data differs from the recorded one in {path}"
        )


def load_digits(split: str = "train") -> Digits:
    """Digits of ``split`` (``"train"``, ``"held_out"`` or ``"all"``), images scaled from [0, 16] to
    [-1, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits

    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be one of 'train', 'held_out', 'all', got {split!r}")
    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    if split == "all":
        idx = np.arange(len(labels))
    else:
        splits = _split_indices()
        _check_recorded_split(splits)
        idx = np.asarray(splits[split])
    return Digits(images[idx], labels[idx], idx)


def write_split_record(path: Path | None = None) -> Path:
    """Write the split to ``dode/assets/digits_split.json`` (done once; committed)."""
    path = path or SPLIT_RECORD
    split = _split_indices()
    record = {"seed": SPLIT_SEED, "n_held_out": N_HELD_OUT, "source": "sklearn.datasets.load_digits", **split}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path
