"""Sample-quality metrics: FD on the embedded digits, FID with Inception, and L2 to a reference trajectory.

All three Frechet metrics share one recipe: features of the samples are summarised by their mean ``mu`` and
covariance ``Sigma`` (:class:`FeatureStats`, accumulated over batches in float64, so 50k samples never have
to be in memory at once), and compared with the statistics of a reference data set by the Frechet distance
``||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2))`` (:func:`frechet_distance`,
pytorch-fid's quantity, computed from Cholesky factors and one symmetric eigenvalue problem).

* :class:`FD` (profiles ``smoke`` and ``cpu``): features are the 64-d penultimate layer of the digit
  classifier (:mod:`dode.metrics.classifier`); the reference is the digits' *train* split (see :class:`FD` for why).
* :class:`FID` (profile ``paper``): the 2048-d final pool features of pytorch-fid's InceptionV3, compared with
  reference statistics of the paper's data sets stored as ``.npz`` files (:func:`reference_stats`).
* :func:`l2_to_reference` / :func:`l2_distances`: distance of samples to the endpoints of a reference
  trajectory (e.g. a 1000-step solve) started from the *same* noise, the quantity of the trajectory figures.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from dode.files import REPO_ROOT, asset, atomic_write, content_sha256, sha256_file
from dode.zoo.data import load_digits

__all__ = [
    "FeatureStats",
    "frechet_distance",
    "FD",
    "fd",
    "data_floor",
    "FID",
    "InceptionWeightsMissing",
    "inception_weights_path",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "REFERENCE_STATS",
    "FID_STATS_DIR",
    "DIGITS_REFERENCE_PATH",
    "reference_stats_path",
    "reference_stats",
    "stats_sha256",
    "write_digits_reference",
    "l2_distances",
    "l2_to_reference",
]

# where the paper's reference statistics are looked up without $DODE_FID_STATS: they are the user's files
# (computed from GBs of images), so they live in the checkout, not in the package
FID_STATS_DIR = REPO_ROOT / "data" / "fid_stats"
# the digits' statistics ship with the package, beside the classifier they were computed with
DIGITS_REFERENCE_PATH = asset("fid_stats", "digits-train.npz")

# ----------------------------------------------------------------------------------------------------------
# Streaming statistics and the Frechet distance


def _as_float64_2d(features) -> np.ndarray:
    if torch.is_tensor(features):
        features = features.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"features must have shape (batch, dim), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("features contain NaN or inf (did the sampler diverge?)")
    return arr


class FeatureStats:
    """Mean and covariance of feature vectors, accumulated batch by batch in float64.

    Each batch is centred on its own mean and merged with the running moments by Chan et al.'s pairwise
    update, which stays accurate when the features have a large mean (a plain running sum of ``x x^T``
    would lose digits to cancellation). ``sigma`` is the unbiased covariance, as ``np.cov`` (and so
    pytorch-fid) computes it.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None  # sum of outer products of deviations from the mean
        self._frozen_sigma: np.ndarray | None = None  # set when loaded from (mu, sigma) without a count

    def update(self, features) -> FeatureStats:
        """Add a batch of features ``(batch, dim)`` (tensor or array); returns ``self``."""
        if self._frozen_sigma is not None:
            raise RuntimeError("these statistics were loaded without a sample count and cannot be updated")
        x = _as_float64_2d(features)
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dimension {x.shape[1]}, expected {self.dim}")
        nb = x.shape[0]
        if nb == 0:
            return self
        mean_b = x.mean(axis=0)
        dev = x - mean_b
        m2_b = dev.T @ dev
        if self.n == 0:
            self.n, self._mean, self._m2 = nb, mean_b, m2_b
            return self
        n = self.n + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.n * nb / n)
        self.n = n
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of both sets of samples (e.g. from several workers)."""
        out = FeatureStats(self.dim or other.dim)
        for s in (self, other):
            if s.n == 0:
                continue
            if s._frozen_sigma is not None:
                raise RuntimeError("statistics loaded without a sample count cannot be merged")
            if out.n == 0:
                out.n, out._mean, out._m2 = s.n, s._mean.copy(), s._m2.copy()
                continue
            n = out.n + s.n
            delta = s._mean - out._mean
            out._mean = out._mean + delta * (s.n / n)
            out._m2 = out._m2 + s._m2 + np.outer(delta, delta) * (out.n * s.n / n)
            out.n = n
        return out

    @property
    def mu(self) -> np.ndarray:
        if self._mean is None:
            raise RuntimeError("no features were accumulated")
        return self._mean

    @property
    def sigma(self) -> np.ndarray:
        if self._frozen_sigma is not None:
            return self._frozen_sigma
        if self.n < 2:
            raise RuntimeError(f"a covariance needs at least 2 samples, got {self.n}")
        return self._m2 / (self.n - 1)

    @classmethod
    def from_moments(cls, mu, sigma, n: int | None = None) -> FeatureStats:
        mu = np.asarray(mu, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(
                f"need mu of shape (d,) and sigma of shape (d, d), got {mu.shape} and {sigma.shape}"
            )
        out = cls(mu.shape[0])
        out._mean = mu
        if n is not None and n >= 2:
            out.n = int(n)
            out._m2 = sigma * (n - 1)
        else:
            out.n = int(n or 0)
            out._frozen_sigma = sigma
        return out

    def save(self, path: str | Path, **extra) -> Path:
        """Write ``mu``, ``sigma`` (pytorch-fid's ``.npz`` keys), ``n`` and ``extra`` arrays, atomically."""

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), **extra)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read an ``.npz`` with keys ``mu`` and ``sigma`` (pytorch-fid's and EDM's format))."""
        path = Path(path)
        with np.load(path) as f:
            missing = {"mu", "sigma"} - set(f.files)
            if missing:
                raise KeyError(
                    f"{path} lacks the key(s) {sorted(missing)}; a statistics file holds 'mu' and 'sigma'"
                )
            n = int(f["n"]) if "n" in f.files else None
            return cls.from_moments(f["mu"], f["sigma"], n)

    def agrees_with(self, other: FeatureStats, rtol: float = 1e-5) -> bool:
        """Whether two statistics are the same up to the rounding of the features they come from.

        Features are float32 (relative rounding ~6e-8); the same features summed in another order (another
        BLAS, thread count or machine) give moments that differ by ~1e-7 relative *as a whole*, while single
        near-zero covariance entries can differ by 1e-3 relative. So the moments are compared as matrices:
        ``||mu_a - mu_b|| <= rtol ||mu_b||`` and ``||Sigma_a - Sigma_b||_F <= rtol ||Sigma_b||_F``. With
        ``rtol = 1e-5`` that leaves two orders of magnitude for rounding, and still refuses statistics of
        other features or other data (a change of 1e-3 relative moves FD measurably).
        """
        mu_a, sigma_a = _moments(self)
        mu_b, sigma_b = _moments(other)
        if mu_a.shape != mu_b.shape:
            return False
        close_mu = np.linalg.norm(mu_a - mu_b) <= rtol * np.linalg.norm(mu_b)
        close_sigma = np.linalg.norm(sigma_a - sigma_b) <= rtol * np.linalg.norm(sigma_b)
        return bool(close_mu and close_sigma)

    def __repr__(self) -> str:
        return f"FeatureStats(n={self.n}, dim={self.dim})"


def _moments(stats) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(stats, FeatureStats):
        return stats.mu, stats.sigma
    if isinstance(stats, tuple | list) and len(stats) == 2:
        return np.asarray(stats[0], np.float64), np.asarray(stats[1], np.float64)
    raise TypeError(f"expected FeatureStats or a (mu, sigma) pair, got {type(stats)}")


def stats_sha256(stats) -> str:
    """Hex sha256 of reference statistics' moments (``mu``, then ``sigma``, float64 bytes): what an FD/FID
    depends on, whatever file or extra keys they came with."""
    import hashlib

    mu, sigma = _moments(stats)
    h = hashlib.sha256(np.ascontiguousarray(mu, np.float64).tobytes())
    h.update(np.ascontiguousarray(sigma, np.float64).tobytes())
    return h.hexdigest()


def _module_sha256(module: torch.nn.Module) -> str:
    """Hex sha256 of a network's parameters and buffers (names and float64 values), for a classifier passed
    as an object rather than as a weights file."""
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def frechet_distance(stats_a, stats_b, device: str | torch.device | None = None) -> float:
    """Frechet distance between two Gaussians given as :class:`FeatureStats` or ``(mu, sigma)`` pairs.

    ``||mu_a - mu_b||^2 + Tr(Sigma_a) + Tr(Sigma_b) - 2 Tr((Sigma_a Sigma_b)^(1/2))``, pytorch-fid's quantity.
    The trace of the matrix square root is the sum of the square roots of the eigenvalues of
    ``Sigma_a Sigma_b`` (real and non-negative: a product of positive semi-definite matrices), taken from
    factors ``B B^T = Sigma`` and one *symmetric* eigenvalue problem instead of pytorch-fid's
    ``scipy.linalg.sqrtm`` of the non-symmetric product (:func:`_trace_sqrt_numpy`,
    :func:`_trace_sqrt_torch`). Both are exact for singular covariances too (fewer samples than features),
    where ``sqrtm`` warns ("Matrix is singular") and may need pytorch-fid's diagonal offset; on 2048-d
    Inception statistics they take a fraction of its time, and no eigenvectors are computed where either
    covariance is positive definite, nor ever with numpy (``benchmarks/frechet.py`` measures both cases;
    tests/test_metrics.py compares the values with pytorch-fid's).

    Where it computes: on ``device`` when one is given (a CUDA device: torch's eigendecompositions there, a
    fraction of a second for 2048-d statistics, so rank 0 of a sweep does not keep the other GPUs waiting;
    ``FID`` passes its own); else on the device of the moments when they are torch tensors; else with numpy
    (and LAPACK's pivoted Cholesky from scipy) on the CPU. Always in float64.
    """
    mu_a, sigma_a = _moments_as_given(stats_a)
    mu_b, sigma_b = _moments_as_given(stats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(
            f"the statistics have different feature dimensions: {mu_a.shape[0]} and {mu_b.shape[0]}"
        )
    moments = (mu_a, sigma_a, mu_b, sigma_b)
    tensors = [x for x in moments if torch.is_tensor(x)]
    if device is None and tensors:
        device = tensors[0].device
    if not tensors and (device is None or torch.device(device).type == "cpu"):
        return _frechet(*(np.asarray(x, np.float64) for x in moments), trace_sqrt=_trace_sqrt_numpy)
    moments = [torch.as_tensor(x).to(device, torch.float64) for x in moments]
    return _frechet(*moments, trace_sqrt=_trace_sqrt_torch)


def _moments_as_given(stats) -> tuple:
    """``(mu, sigma)`` as numpy arrays or torch tensors, wherever they are (no copy to the CPU)."""
    if isinstance(stats, tuple | list) and len(stats) == 2 and any(torch.is_tensor(x) for x in stats):
        return tuple(torch.as_tensor(x) for x in stats)
    return _moments(stats)


def _frechet(mu_a, sigma_a, mu_b, sigma_b, trace_sqrt) -> float:
    """The distance of :func:`frechet_distance`, numpy arrays or torch tensors alike; ``trace_sqrt``
    computes ``Tr((Sigma_a Sigma_b)^(1/2))`` for them."""
    diff = mu_a - mu_b
    value = diff @ diff + sigma_a.trace() + sigma_b.trace() - 2.0 * trace_sqrt(sigma_a, sigma_b)
    return float(value)


def _trace_sqrt_numpy(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """``Tr((Sigma_a Sigma_b)^(1/2))`` on the CPU, from rank-revealing factors of both covariances.

    With ``B_a B_a^T = Sigma_a`` and ``B_b B_b^T = Sigma_b`` (:func:`_pivoted_cholesky`, ``d x r_a`` and
    ``d x r_b``), ``Sigma_a Sigma_b = B_a (B_a^T B_b B_b^T)`` has the nonzero eigenvalues of
    ``B_a^T B_b B_b^T B_a = M M^T``, ``M = B_a^T B_b`` (``XY`` and ``YX`` share them), which are those of
    ``M^T M`` too. So the trace of the square root is the sum of the square roots of the eigenvalues of the
    smaller of the two Gram matrices, ``min(r_a, r_b)`` square: the whole of 2048 for full-rank covariances,
    their rank for singular ones, whose eigenvalue problem is then a fraction of the size.
    """
    cross = _pivoted_cholesky(sigma_a).T @ _pivoted_cholesky(sigma_b)
    gram = cross @ cross.T if cross.shape[0] <= cross.shape[1] else cross.T @ cross  # numpy's syrk: symmetric
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None)).sum())  # rounding: tiny negatives


def _pivoted_cholesky(sigma: np.ndarray) -> np.ndarray:
    """``B`` (``d x r``, ``r`` the rank of ``sigma``) with ``B B^T = sigma``: LAPACK's Cholesky with complete
    pivoting (``dpstrf``), ``P^T sigma P = L L^T``, ``B = P L[:, :r]``. It stops where the largest remaining
    diagonal entry is below ``d * eps * max(diag(sigma))`` (LAPACK's default): what is left is rounding, the
    covariance of fewer samples than features having a rank below ``d``. As fast as a Cholesky factorisation
    (a small fraction of an eigendecomposition) for a positive definite ``sigma``, faster for a singular one.
    """
    from scipy.linalg.lapack import dpstrf  # scipy comes with dode[metrics] (pytorch-fid needs it)

    factor, pivots, rank, info = dpstrf(sigma, lower=1)
    if info < 0:
        raise ValueError(f"LAPACK's dpstrf refused argument {-info} (a covariance of shape {sigma.shape})")
    out = np.empty((sigma.shape[0], rank))
    out[pivots - 1] = np.tril(factor[:, :rank])  # the upper triangle still holds sigma's entries
    return out


def _trace_sqrt_torch(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> torch.Tensor:
    """``Tr((Sigma_a Sigma_b)^(1/2))`` with torch's linear algebra, where the moments are (e.g. a GPU).

    With any ``B`` such that ``B B^T = Sigma_a``, ``Sigma_a Sigma_b = B (B^T Sigma_b)`` has the eigenvalues
    of the symmetric positive semi-definite ``B^T Sigma_b B`` (``XY`` and ``YX`` share them), so the trace
    of the square root is the sum of their square roots. ``Sigma_a Sigma_b`` and ``Sigma_b Sigma_a`` (its
    transpose) have the same eigenvalues, so ``B`` is Cholesky's factor of whichever covariance is positive
    definite (``Sigma_a`` tried first), and ``V W^(1/2)`` from ``Sigma_a = V W V^T`` only where neither is.
    """
    half, other = _cholesky_of_either(sigma_a, sigma_b)
    inner = half.T @ other @ half
    eigenvalues = torch.linalg.eigvalsh(0.5 * (inner + inner.T))  # symmetric up to rounding: made exactly so
    return eigenvalues.clamp(min=0.0).sqrt().sum()  # rounding can make tiny eigenvalues negative


def _cholesky_of_either(sigma_a: torch.Tensor, sigma_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, other)``: ``B`` a factor (``B B^T``) of one covariance, ``other`` the other covariance."""
    for sigma, other in ((sigma_a, sigma_b), (sigma_b, sigma_a)):
        factor, info = torch.linalg.cholesky_ex(sigma)
        if info == 0:
            return factor, other
    w, v = torch.linalg.eigh(sigma_a)
    return v * w.clamp(min=0.0).sqrt(), sigma_b  # rounding can make tiny eigenvalues negative


def _batches(samples, batch_size: int) -> Iterable[torch.Tensor]:
    """A tensor is cut into batches; any other iterable is taken as an iterable of batches."""
    if torch.is_tensor(samples) or isinstance(samples, np.ndarray):
        samples = torch.as_tensor(samples)
        for i in range(0, samples.shape[0], batch_size):
            yield samples[i : i + batch_size]
    else:
        for batch in samples:
            yield torch.as_tensor(batch)


def _check_images(x: torch.Tensor, channels: int | None = None, size: int | None = None) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"samples must have shape (N, C, H, W), got {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"samples must have {channels} channel(s), got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != (size, size):
        raise ValueError(f"samples must be {size}x{size} images, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or inf (did the sampler diverge?)")
    return x


# ----------------------------------------------------------------------------------------------------------
# FD: Frechet distance in the digit classifier's features


def write_digits_reference(
    classifier_path: str | Path | None = None, path: str | Path = DIGITS_REFERENCE_PATH
) -> Path:
    """Compute and store the FD reference statistics (the 1,500 digits of the train split in the classifier's
    features; not the held-out split) under ``dode/assets/fid_stats/``."""
    from dode.metrics import classifier as clf

    classifier_path = Path(classifier_path or clf.CLASSIFIER_PATH)
    model = clf.load(classifier_path)
    stats = FD(classifier=model).reference  # a classifier object: its reference is computed, not loaded
    return stats.save(path, classifier_sha256=np.array(sha256_file(classifier_path)), split=np.array("train"))


class FD:
    """Frechet distance of digit samples to the digits, in the digit classifier's penultimate features.

    Reference: the **train split** (1,500 images), not all 1,797. The diffusion models of the embedded
    profile are trained on the train split, so -- as FID is measured against the training set (CIFAR-10's
    50k train images) -- the target distribution of the samples is the train split. Keeping the 297
    held-out images out of the reference gives an honest **data floor** (:meth:`data_floor`): the FD of
    fresh images of the true distribution that neither the diffusion model nor the classifier has seen.
    A sampler that reproduced the data distribution perfectly would score about the floor; a value well
    below it signals memorisation of training images. The floor is measured with 297 samples; FD's
    finite-sample bias shrinks with N, so samples evaluated with N > 297 can score somewhat below it
    without memorising (compare :meth:`train_subset_fd`). What a sampler scores at a figure's own sample
    count once converged is its *noise floor*, measured on the model's samples
    (:func:`dode.companion.experiments.noise_floor`) and shown on page 00 ("The metric").

    Parameters
    ----------
    classifier:
        a :class:`~dode.metrics.classifier.DigitClassifier`, or a path to its weights; default the committed one.
    reference:
        :class:`FeatureStats` or a path to an ``.npz``; default ``dode/assets/fid_stats/digits-train.npz``, which
        must have been computed from the same classifier weights (checked by sha256).
    device, batch_size:
        where and in what batches features are computed.
    """

    def __init__(
        self,
        classifier=None,
        reference: FeatureStats | str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 1000,
    ):
        from dode.metrics import classifier as clf

        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        classifier_path = None
        if classifier is None or isinstance(classifier, str | Path):
            classifier_path = Path(classifier or clf.CLASSIFIER_PATH)
            classifier = clf.load(classifier_path)
        if not isinstance(classifier, torch.nn.Module) or not hasattr(classifier, "features"):
            raise TypeError(
                "classifier must be a DigitClassifier (with a .features method) or a path to its weights"
            )
        self.classifier = classifier.to(self.device).eval()
        self._classifier_sha256 = (
            sha256_file(classifier_path) if classifier_path is not None else _module_sha256(classifier)
        )
        if reference is None:
            if classifier_path is None:
                # a classifier of the caller's: its own features of the train split define the reference
                self.reference = self.stats(load_digits("train").images)
            else:
                self.reference = self._load_digits_reference(classifier_path)
        elif isinstance(reference, FeatureStats):
            self.reference = reference
        else:
            self.reference = FeatureStats.load(reference)

    def identity(self) -> dict[str, str]:
        """What an FD value depends on besides the samples: the classifier's weights and the reference
        statistics (their hashes), for results files to refuse mixing values of different ones."""
        return {
            "metric": "fd",
            "classifier_sha256": self._classifier_sha256,
            "reference_sha256": stats_sha256(self.reference),
        }

    @staticmethod
    def _load_digits_reference(classifier_path: Path) -> FeatureStats:
        path = DIGITS_REFERENCE_PATH
        if not path.exists():
            raise FileNotFoundError(
                f"FD reference statistics not found at {path}; write them with "
                "`python -m dode.metrics digits-reference` (after `python -m dode.metrics.classifier` if retrained)"
            )
        with np.load(path) as f:
            recorded = str(f["classifier_sha256"]) if "classifier_sha256" in f.files else None
        if recorded != sha256_file(classifier_path):
            raise RuntimeError(
                f"{path} was computed with other classifier weights than {classifier_path}; "
                "recompute it with dode.metrics.write_digits_reference()"
            )
        return FeatureStats.load(path)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier features ``(N, 64)`` (float64, on the CPU) of images in [-1, 1] of shape (N, 1, 8, 8).

        Values outside [-1, 1] (a sampler's overshoot) are clipped, as saving images would.
        """
        images = _check_images(torch.as_tensor(images), channels=1, size=8)
        out = []
        with torch.no_grad():
            for batch in _batches(images, self.batch_size):
                x = batch.to(self.device, torch.float32).clamp(-1.0, 1.0)
                out.append(self.classifier.features(x).to("cpu", torch.float64))
        return torch.cat(out)

    def stats(self, samples) -> FeatureStats:
        """Feature statistics of a tensor of samples, or of an iterable of batches (streamed)."""
        stats = FeatureStats()
        for batch in _batches(samples, self.batch_size):
            stats.update(self.features(batch))
        return stats

    def __call__(self, samples) -> float:
        """FD of ``samples``: a tensor (N, 1, 8, 8) in [-1, 1], an iterable of such batches, or stats."""
        stats = samples if isinstance(samples, FeatureStats) else self.stats(samples)
        return frechet_distance(stats, self.reference)

    def data_floor(self) -> float:
        """FD of the held-out split (297 unseen images) against the reference."""
        return self(load_digits("held_out").images)

    def train_subset_fd(self, n: int = 297, seed: int = 0) -> float:
        """FD of ``n`` random train images: the floor's finite-sample part, without its generalisation gap."""
        images = load_digits("train").images
        idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        return self(images[idx])


_DEFAULT_FD: FD | None = None


def _default_fd() -> FD:
    global _DEFAULT_FD
    if _DEFAULT_FD is None:
        _DEFAULT_FD = FD()
    return _DEFAULT_FD


def fd(samples) -> float:
    """FD of digit ``samples`` with the committed classifier and reference (built once, then reused)."""
    return _default_fd()(samples)


def data_floor() -> float:
    """FD of the held-out digits against the reference (see :meth:`FD.data_floor`)."""
    return _default_fd().data_floor()


# ----------------------------------------------------------------------------------------------------------
# FID: pytorch-fid's InceptionV3

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"


class InceptionWeightsMissing(FileNotFoundError):
    """The FID Inception weights are not in the torch hub cache (and dode never downloads them itself)."""


def inception_weights_path() -> Path:
    """Where pytorch-fid looks for its Inception weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


class FID:
    """FID in pytorch-fid's InceptionV3 (2048-d final pool features), for the paper profile.

    The weights are read from the torch hub cache, exactly where pytorch-fid expects them
    (:func:`inception_weights_path`). Their absence is an error (:class:`InceptionWeightsMissing`) that says
    where the file must go and where it comes from; nothing is downloaded behind the user's back.

    Samples are images in [-1, 1] of shape (N, C, H, W), C = 1 or 3. With ``quantize=True`` (the default)
    they are rounded to 8 bits first, as when samples are saved as PNG and scored with
    ``python -m pytorch_fid`` (or EDM's ``fid.py``), which published FIDs do; then mapped to [0, 1], which
    pytorch-fid's InceptionV3 resizes to 299x299 and rescales itself.

    ``reference`` is a name of :data:`REFERENCE_STATS` (read from ``stats_dir``, see
    :func:`reference_stats_path`), an ``.npz`` path, or :class:`FeatureStats`.
    """

    DIM = 2048

    def __init__(
        self,
        device: str | torch.device = "cpu",
        batch_size: int = 100,
        reference: str | Path | FeatureStats | None = None,
        quantize: bool = True,
        stats_dir: str | Path | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        weights = inception_weights_path()
        if not weights.is_file():
            raise InceptionWeightsMissing(
                f"FID needs pytorch-fid's Inception weights at {weights} (the torch hub cache, "
                f"$TORCH_HOME/hub/checkpoints; TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}). "
                f"The file comes from {INCEPTION_WEIGHTS_URL}; on a machine with internet, download it there "
                "(e.g. `python -c 'import pytorch_fid.inception as i; i.fid_inception_v3()'`), or copy it "
                "from such a machine. dode does not download it itself."
            )
        from pytorch_fid.inception import InceptionV3

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.quantize = quantize
        # the file is in the hub cache, so pytorch-fid's load_state_dict_from_url only reads it
        self.model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[self.DIM]]).to(self.device).eval()
        self.weights_sha256 = content_sha256(weights)
        if reference is None or isinstance(reference, FeatureStats):
            self.reference = reference
        elif isinstance(reference, str) and reference in REFERENCE_STATS:
            self.reference = reference_stats(reference, stats_dir)
        else:
            self.reference = FeatureStats.load(reference)

    def identity(self) -> dict[str, str]:
        """What an FID value depends on besides the samples: the Inception weights and the reference
        statistics (their hashes) and the 8-bit quantisation, for results files to refuse mixing them."""
        if self.reference is None:
            raise ValueError("an FID without reference statistics has no identity: pass reference=")
        return {
            "metric": "fid",
            "inception_sha256": self.weights_sha256,
            "reference_sha256": stats_sha256(self.reference),
            "quantize": str(int(self.quantize)),
        }

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Inception pool features ``(N, 2048)`` (float64, on the CPU) of images in [-1, 1]."""
        images = _check_images(torch.as_tensor(images))
        if images.shape[1] not in (1, 3):
            raise ValueError(f"samples must have 1 or 3 channels, got shape {tuple(images.shape)}")
        out = []
        with torch.no_grad():
            for batch in _batches(images, self.batch_size):
                x = ((batch.to(self.device, torch.float32) + 1.0) / 2.0).clamp(0.0, 1.0)
                if self.quantize:
                    x = torch.round(x * 255.0) / 255.0
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                feats = self.model(x)[0]
                out.append(feats.reshape(feats.shape[0], -1).to("cpu", torch.float64))
        return torch.cat(out)

    def stats(self, samples) -> FeatureStats:
        """Feature statistics of a tensor of samples, or of an iterable of batches (streamed)."""
        stats = FeatureStats(self.DIM)
        for batch in _batches(samples, self.batch_size):
            stats.update(self.features(batch))
        return stats

    def __call__(self, samples, reference: str | Path | FeatureStats | None = None) -> float:
        """FID of ``samples`` (tensor, iterable of batches, or FeatureStats) against the reference."""
        if reference is None:
            reference = self.reference
        if reference is None:
            raise ValueError(
                "no reference statistics: pass reference= (a name of REFERENCE_STATS, a path, stats)"
            )
        if isinstance(reference, str) and reference in REFERENCE_STATS:
            reference = reference_stats(reference)
        elif not isinstance(reference, FeatureStats):
            reference = FeatureStats.load(reference)
        stats = samples if isinstance(samples, FeatureStats) else self.stats(samples)
        return frechet_distance(stats, reference, device=self.device)


# Reference Inception statistics of the paper's data sets: file name under data/fid_stats/ (or
# $DODE_FID_STATS), the images' resolution (the models scored against them must sample at it) and the
# images they come from. They must be computed with pytorch-fid's Inception, the network that scores the
# samples: statistics of another port (EDM's fid-refs, TensorFlow's) give other FIDs and are not mixed in.
_SAVE_STATS = "python -m pytorch_fid --save-stats <folder of {what}> <file> --device cuda"
REFERENCE_STATS: dict[str, dict] = {
    "cifar10": {"file": "cifar10-32x32.npz", "resolution": 32, "images": "the 50k CIFAR-10 train PNGs"},
    "celeba-64": {
        "file": "celeba-64x64.npz",
        "resolution": 64,
        "images": "CelebA train images, centre-cropped and resized to 64x64 as the DDIM repository does",
    },
    "imagenet-128": {
        "file": "imagenet-128x128.npz",
        "resolution": 128,
        "images": "ImageNet train images at 128x128 (guided-diffusion's centre crop)",
    },
    "lsun-bedroom-256": {
        "file": "lsun-bedroom-256x256.npz",
        "resolution": 256,
        "images": "LSUN bedroom train images at 256x256",
    },
    "ffhq-64": {"file": "ffhq-64x64.npz", "resolution": 64, "images": "the 70k FFHQ images at 64x64"},
    "imagenet-64": {
        "file": "imagenet-64x64.npz",
        "resolution": 64,
        "images": "ImageNet train images at 64x64 (EDM's dataset_tool.py --resolution=64x64)",
    },
    "celebahq-256": {
        "file": "celebahq-256x256.npz",
        "resolution": 256,
        "images": "CelebA-HQ images at 256x256",
    },
}
for _entry in REFERENCE_STATS.values():
    _entry["source"] = _SAVE_STATS.format(what=_entry["images"])


def reference_stats_path(name: str, directory: str | Path | None = None) -> Path:
    """Expected location of a data set's reference statistics (``$DODE_FID_STATS`` or ``data/fid_stats``)."""
    if name not in REFERENCE_STATS:
        raise ValueError(f"unknown reference statistics {name!r}; available: {sorted(REFERENCE_STATS)}")
    directory = Path(directory or os.environ.get("DODE_FID_STATS") or FID_STATS_DIR)
    return directory / REFERENCE_STATS[name]["file"]


def reference_stats(name: str, directory: str | Path | None = None) -> FeatureStats:
    """Reference Inception statistics of one of the paper's data sets, read from its ``.npz`` file."""
    path = reference_stats_path(name, directory)
    if not path.is_file():
        raise FileNotFoundError(
            f"reference statistics for {name!r} not found at {path} (a .npz with keys 'mu' and 'sigma' of "
            f"pytorch-fid's Inception features). Compute them with `{REFERENCE_STATS[name]['source']}` and "
            "put the file there (or set DODE_FID_STATS / the notebook parameter fid_stats to its folder). "
            "Statistics of another Inception port, such as EDM's fid-refs, give other FIDs: do not use them"
        )
    stats = FeatureStats.load(path)
    if stats.dim != FID.DIM:
        raise ValueError(f"{path} holds {stats.dim}-d statistics; FID's Inception features are {FID.DIM}-d")
    return stats


# ----------------------------------------------------------------------------------------------------------
# Distance to a reference trajectory


def l2_distances(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean distance ``||x_i - x_ref_i||_2`` over all pixels, float64, shape (N,).

    ``reference`` holds the endpoints of a reference solve (e.g. many-step) from the *same* noise, row by row.
    """
    samples = torch.as_tensor(samples)
    reference = torch.as_tensor(reference)
    if samples.shape != reference.shape:
        raise ValueError(
            "samples and reference must have the same shape, "
            f"got {tuple(samples.shape)} and {tuple(reference.shape)}"
        )
    if samples.ndim < 1 or samples.shape[0] == 0:
        raise ValueError("samples must have a non-empty batch dimension")
    diff = samples.to(torch.float64) - reference.to(samples.device, torch.float64)
    return diff.reshape(diff.shape[0], -1).norm(dim=1).cpu()


def l2_to_reference(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over samples of :func:`l2_distances`."""
    return float(l2_distances(samples, reference).mean())
