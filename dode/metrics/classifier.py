"""A small CNN digit classifier whose penultimate features define FD, the cpu profile's quality metric.

FID measures sample quality in the pool features of an ImageNet Inception network. Inception features mean
little on 8x8 grey digits, so the embedded profile uses the same Frechet distance in the features of a
classifier trained on the digits themselves (the usual stand-in on MNIST-like data). The network is three
3x3 convolutions, a global average pool (the analogue of Inception's final pool, and the features), and a
linear read-out to the 10 classes.

The classifier is trained by :func:`train` with a fixed seed on the *train* split of
:func:`dode.zoo.data.load_digits`, and evaluated on the held-out split, which it never sees. Retrain with::

    python -m dode.metrics.classifier

which writes ``dode/assets/models/digits-classifier.safetensors`` and its card ``digits-classifier.json``
(accuracy, steps, seed, wall time, sha256, git commit). The FD reference statistics (these features of the
train split, :class:`dode.metrics.FD`) depend on these weights: rewrite them with
``python -m dode.metrics digits-reference``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dode.files import asset, atomic_write, git_commit, sha256_file
from dode.zoo.data import load_digits

__all__ = [
    "DigitClassifier",
    "TrainConfig",
    "train",
    "evaluate",
    "save",
    "load",
    "CLASSIFIER_PATH",
    "FEATURE_DIM",
]

CLASSIFIER_PATH = asset("models", "digits-classifier.safetensors")
FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """conv(16) - conv(32) - maxpool - conv(64) - global average pool -> 64 features -> linear(10)."""

    def __init__(self, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, feature_dim, 3, padding=1)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, 64)`` of images in [-1, 1].

        SiLU rather than ReLU: a ReLU unit that is dead on all the data gives a feature of zero variance and a
        singular covariance, which makes the matrix square root of the Frechet distance ill-conditioned.
        """
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"images must have shape (N, 1, 8, 8), got {tuple(x.shape)}")
        h = F.silu(self.conv1(x))
        h = F.max_pool2d(F.silu(self.conv2(h)), 2)  # 8x8 -> 4x4
        h = F.silu(self.conv3(h))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1  # random translation by up to this many pixels (the digits are not perfectly centred)


def _augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by a random integer offset, filling with the background value -1."""
    if max_shift == 0:
        return x
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    shifts = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=gen)
    out = torch.empty_like(x)
    # one slice per distinct offset (at most (2 * max_shift + 1)^2) rather than one per image
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[sel] = pad[sel, :, dy : dy + 8, dx : dx + 8]
    return out


def evaluate(model: DigitClassifier, split: str = "held_out") -> float:
    """Accuracy of ``model`` on a split of the digits."""
    data = load_digits(split)
    model.eval()
    with torch.no_grad():
        pred = model(data.images).argmax(dim=1)
    return float((pred == data.labels).double().mean())


def train(config: TrainConfig = TrainConfig(), verbose: bool = False) -> tuple[DigitClassifier, dict]:
    """Train the classifier on the train split; returns the model and its card (metrics, settings)."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = load_digits("train")
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # cosine decay to zero: a fixed budget of steps, no early stopping on the held-out split (which stays
    # unseen so that its accuracy and its FD are honest)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    n = data.images.shape[0]
    start = time.perf_counter()
    model.train()
    for step in range(config.steps):
        idx = torch.randint(0, n, (config.batch_size,), generator=gen)
        x = _augment(data.images[idx], config.max_shift, gen)
        loss = F.cross_entropy(model(x), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if verbose and (step + 1) % 500 == 0:
            print(f"step {step + 1}/{config.steps}  loss {loss.item():.4f}", flush=True)
    wall = time.perf_counter() - start
    model.eval()
    card = {
        "name": "digits-classifier",
        "architecture": "conv3x3(16)-silu-conv3x3(32)-silu-maxpool2-conv3x3(64)-silu-avgpool -> linear(10)",
        "feature_dim": FEATURE_DIM,
        "train_split": "train",
        "n_train": int(n),
        "held_out_accuracy": evaluate(model, "held_out"),
        "train_accuracy": evaluate(model, "train"),
        "steps": config.steps,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "max_shift": config.max_shift,
        "wall_time_s": round(wall, 2),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    return model, card


def save(model: DigitClassifier, card: dict, path: Path = CLASSIFIER_PATH) -> Path:
    """Write the weights (safetensors) and the card (JSON beside them), each atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    card = {
        **card,
        "sha256": sha256_file(path),
        "git_commit": git_commit(("dode/metrics/classifier.py", "dode/zoo/data.py")),
        "file": path.name,
    }
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    return path


def load(path: Path | str = CLASSIFIER_PATH, device: str | torch.device = "cpu") -> DigitClassifier:
    """The trained classifier (eval mode). Raises if the weights are missing or differ from their card."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"digit classifier weights not found at {path}; train them with `python -m dode.metrics.classifier`"
        )
    card_path = path.with_suffix(".json")
    if card_path.exists():
        expected = json.loads(card_path.read_text()).get("sha256")
        if expected and expected != sha256_file(path):
            raise RuntimeError(
                f"{path} does not match the sha256 recorded in {card_path}; retrain or restore it"
            )
    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval()


def card(path: Path | str = CLASSIFIER_PATH) -> dict:
    """The classifier's card (JSON written beside its weights)."""
    return json.loads(Path(path).with_suffix(".json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the digit classifier whose features define FD.")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--out", type=Path, default=CLASSIFIER_PATH)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the run reproducible)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = train(TrainConfig(seed=args.seed, steps=args.steps), verbose=True)
    path = save(model, info, args.out)
    print(f"held-out accuracy {info['held_out_accuracy']:.4f} in {info['wall_time_s']:.1f} s -> {path}")
    print("the FD reference statistics depend on these weights: `python -m dode.metrics digits-reference`")


if __name__ == "__main__":
    main()
