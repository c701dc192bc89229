"""Metrics: streaming statistics, Frechet distance, FD on the digits, FID's Inception, L2 to reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dode import metrics as M
from dode.metrics import classifier as clf
from dode.zoo.data import load_digits

# ---------------------------------------------------------------------------------------------------------
# FeatureStats


def test_feature_stats_match_numpy_over_uneven_batches():
    rng = np.random.default_rng(1)
    # a large common offset: a naive sum of x x^T would lose most digits of the covariance to cancellation
    data = 1e4 + rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    stats = M.FeatureStats()
    start = 0
    for size in (1, 7, 50, 3, 139, 200):
        stats.update(torch.from_numpy(data[start : start + size]))
        start += size
    assert stats.n == 400
    np.testing.assert_allclose(stats.mu, data.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.sigma, np.cov(data, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64


def test_feature_stats_accumulate_float32_input_in_float64():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(300, 4)).astype(np.float32)
    stats = M.FeatureStats()
    for chunk in np.array_split(data, 7):
        stats.update(torch.from_numpy(chunk))
    exact = data.astype(np.float64)
    np.testing.assert_allclose(stats.sigma, np.cov(exact, rowvar=False), rtol=1e-12, atol=1e-14)


def test_feature_stats_merge_equals_single_pass():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(37, 5)), rng.normal(loc=2.0, size=(91, 5))
    merged = M.FeatureStats().update(a).merge(M.FeatureStats().update(b))
    whole = np.concatenate([a, b])
    np.testing.assert_allclose(merged.mu, whole.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.sigma, np.cov(whole, rowvar=False), rtol=1e-10)


def test_feature_stats_reject_bad_input():
    stats = M.FeatureStats().update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="dimension 5, expected 4"):
        stats.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((2, 4), np.nan))
    with pytest.raises(RuntimeError, match="at least 2"):
        _ = M.FeatureStats().update(np.zeros((1, 4))).sigma


def test_feature_stats_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    stats = M.FeatureStats().update(rng.normal(size=(50, 3)))
    path = stats.save(tmp_path / "s.npz")
    with np.load(path) as f:
        assert {"mu", "sigma"} <= set(f.files)  # readable as pytorch-fid / EDM statistics
    back = M.FeatureStats.load(path)
    assert back.n == 50
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_allclose(back.sigma, stats.sigma, rtol=1e-15)
    # loaded with a count, the statistics keep accumulating exactly
    extra = rng.normal(size=(20, 3))
    back.update(extra)
    np.testing.assert_allclose(back.sigma, stats.update(extra).sigma, rtol=1e-12)


def test_feature_stats_without_count_are_read_only(tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(3), sigma=np.eye(3))
    ref = M.FeatureStats.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(ref.sigma, np.eye(3))
    with pytest.raises(RuntimeError, match="without a sample count"):
        ref.update(np.zeros((2, 3)))
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(KeyError, match="'mu'"):
        M.FeatureStats.load(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------------------------------------
# Frechet distance


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = M.frechet_distance((mu1, np.diag(v1)), (mu2, np.diag(v2)))
    assert got == pytest.approx(expected, rel=1e-10)
    assert M.frechet_distance((mu1, np.diag(v1)), (mu1, np.diag(v1))) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="different feature dimensions"):
        M.frechet_distance((mu1, np.diag(v1)), (np.zeros(2), np.eye(2)))


#: where frechet_distance can compute: numpy on the CPU, torch on the CPU, and torch on a GPU when there is one
PLACES = ["numpy", "torch-cpu"] + (["torch-cuda"] if torch.cuda.is_available() else [])

#: sample counts of the two covariances (of 96-d features): fewer than 96 make a singular one, of rank n - 1
SAMPLE_COUNTS = {
    "full-rank": (400, 400),
    "singular-a": (40, 400),
    "singular-b": (400, 40),
    "both-singular": (40, 70),
}


def _moments_of(x: np.ndarray):
    return x.mean(0), np.cov(x, rowvar=False)


def _features(n_a: int, n_b: int, d: int = 96):
    """Features of two distributions, ``n_a`` and ``n_b`` samples: a correlated one and a shifted, scaled
    white one."""
    rng = np.random.default_rng(n_a + 1000 * n_b)
    a = rng.standard_normal((n_a, d)) @ (rng.standard_normal((d, d)) / np.sqrt(d))
    b = 1.1 * rng.standard_normal((n_b, d)) + 0.1
    return a, b


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("counts", SAMPLE_COUNTS.values(), ids=SAMPLE_COUNTS.keys())
def test_frechet_distance_equals_pytorch_fid(counts, place):
    """Same value as pytorch-fid's sqrtm-based formula, on full-rank covariances and on singular ones (fewer
    samples than features, where sqrtm warns): one singular and the other positive definite, either way
    round, and both singular with different ranks; from numpy moments and from torch tensors where they are."""
    import warnings

    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = _features(*counts)
    (mu_a, s_a), (mu_b, s_b) = _moments_of(a), _moments_of(b)
    d = a.shape[1]
    ranks = [min(n - 1, d) for n in counts]
    assert [np.linalg.matrix_rank(s) for s in (s_a, s_b)] == ranks  # the case the id names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = calculate_frechet_distance(mu_a, s_a, mu_b, s_b)
    moments = [mu_a, s_a, mu_b, s_b]
    if place != "numpy":
        moments = [torch.from_numpy(x).to(place.removeprefix("torch-")) for x in moments]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no LinAlgWarning or any other: nothing to silence downstream
        got = M.frechet_distance(tuple(moments[:2]), tuple(moments[2:]))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("counts", SAMPLE_COUNTS.values(), ids=SAMPLE_COUNTS.keys())
def test_numpy_frechet_solves_one_eigenvalue_problem_of_the_smaller_rank(counts, monkeypatch):
    """On the CPU no eigenvectors are computed, whatever the ranks: both covariances are factored by
    pivoted Cholesky, and the one eigenvalue problem is as large as the smaller rank (39 of 96 when one
    covariance comes from 40 samples), not the feature dimension."""
    import scipy.linalg

    (mu_a, s_a), (mu_b, s_b) = (_moments_of(x) for x in _features(*counts))
    sizes = []
    eigvalsh = np.linalg.eigvalsh
    monkeypatch.setattr(np.linalg, "eigvalsh", lambda x: sizes.append(x.shape) or eigvalsh(x))
    for module, name in [(np.linalg, "eigh"), (scipy.linalg, "eigh"), (torch.linalg, "eigh")]:
        monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("an eigendecomposition ran"))
    M.frechet_distance((mu_a, s_a), (mu_b, s_b))
    rank = min(min(n - 1, 96) for n in counts)
    assert sizes == [(rank, rank)]


@pytest.mark.parametrize("counts", SAMPLE_COUNTS.values(), ids=SAMPLE_COUNTS.keys())
def test_torch_frechet_computes_eigenvectors_only_when_both_covariances_are_singular(counts, monkeypatch):
    """torch's path factors whichever covariance is positive definite by Cholesky (Tr (S_a S_b)^(1/2) is
    symmetric in a and b), and decomposes S_a with eigenvectors only where neither is."""
    stats_a, stats_b = (tuple(torch.from_numpy(m) for m in _moments_of(x)) for x in _features(*counts))
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda x: calls.append(x.shape) or eigh(x))
    M.frechet_distance(stats_a, stats_b)
    assert calls == ([(96, 96)] if max(counts) <= 96 else [])  # both from fewer samples than features


def test_pivoted_cholesky_factors_a_covariance_by_its_rank():
    """``B B^T = Sigma`` with as many columns as Sigma's rank: 24 for the covariance of 25 samples."""
    rng = np.random.default_rng(3)
    for n, rank in [(25, 24), (200, 40)]:
        _, sigma = _moments_of(rng.standard_normal((n, 40)) + 3.0)
        factor = M._pivoted_cholesky(sigma)
        assert factor.shape == (40, rank)
        np.testing.assert_allclose(factor @ factor.T, sigma, rtol=0, atol=1e-12 * np.abs(sigma).max())


def test_no_distance_goes_through_pytorch_fids_sqrtm():
    """pytorch-fid's calculate_frechet_distance (scipy's sqrtm: tens of CPU seconds on 2048-d statistics, and
    a LinAlgWarning "Matrix is singular" on fewer samples than features) is called nowhere in dode."""
    from pathlib import Path

    sources = Path(M.__file__).resolve().parents[1].rglob("*.py")
    offenders = [
        str(path)
        for path in sources
        if any(s in path.read_text() for s in ("fid_score", "sqrtm(", "calculate_frechet_distance"))
    ]
    assert offenders == []


def test_frechet_distance_computes_on_the_device_it_is_given(monkeypatch):
    """numpy moments (FeatureStats) stay with numpy on the CPU, and are computed with torch's
    linear algebra in float64 on a GPU given as ``device``; tensors are computed where they are. The
    same value everywhere."""
    rng = np.random.default_rng(7)
    a = M.FeatureStats().update(rng.standard_normal((30, 12)))
    b = M.FeatureStats().update(rng.standard_normal((50, 12)) + 0.5)
    numpy_value = M.frechet_distance(a, b)
    calls = []
    eigvalsh = torch.linalg.eigvalsh  # the one eigenvalue problem every path solves
    monkeypatch.setattr(
        torch.linalg, "eigvalsh", lambda x: calls.append((x.device.type, x.dtype)) or eigvalsh(x)
    )
    assert M.frechet_distance(a, b, device="cpu") == numpy_value and calls == []
    if torch.cuda.is_available():
        assert M.frechet_distance(a, b, device="cuda") == pytest.approx(numpy_value, rel=1e-12)
        assert calls == [("cuda", torch.float64)]
        calls.clear()
    tensors = [torch.as_tensor(x, dtype=torch.float32) for x in (a.mu, a.sigma, b.mu, b.sigma)]
    value = M.frechet_distance(tuple(tensors[:2]), tuple(tensors[2:]))
    assert calls == [("cpu", torch.float64)]
    assert value == pytest.approx(numpy_value, rel=1e-5)  # the moments were rounded to float32


# ---------------------------------------------------------------------------------------------------------
# The classifier and FD


def test_committed_classifier_matches_its_card():
    card = clf.card()
    assert card["sha256"] == clf.sha256_file(clf.CLASSIFIER_PATH)
    model = clf.load()
    accuracy = clf.evaluate(model, "held_out")
    assert accuracy == pytest.approx(card["held_out_accuracy"], abs=1e-12)
    assert accuracy >= 0.97
    assert card["train_split"] == "train" and card["seed"] == 0


def test_short_training_run_learns():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: threads only add overhead on a shared CPU
    try:
        model, card = clf.train(clf.TrainConfig(steps=100, batch_size=32, lr=5e-3, seed=1))
    finally:
        torch.set_num_threads(threads)
    assert card["held_out_accuracy"] > 0.4  # chance is 0.1; the full 2,000 steps reach > 0.97
    assert model.features(load_digits("held_out").images[:5]).shape == (5, clf.FEATURE_DIM)


@pytest.fixture(scope="module")
def fd():
    return M.FD()


def test_cached_reference_is_current(tmp_path, fd):
    path = M.write_digits_reference(path=tmp_path / "ref.npz")
    fresh = M.FeatureStats.load(path)
    assert fresh.n == 1500
    # recomputed on another machine the moments differ by float32 rounding of the features (measured
    # 4.4e-8 relative in Frobenius norm); see FeatureStats.agrees_with for the criterion
    assert fresh.agrees_with(fd.reference)
    assert M.frechet_distance(fresh, fd.reference) < 1e-6 * fd.data_floor()


def test_stats_agreement_criterion_separates_rounding_from_change(fd):
    ref = fd.reference
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(ref.sigma.shape)
    noise = (noise + noise.T) / 2
    scale = np.linalg.norm(ref.sigma) / np.linalg.norm(noise)

    def perturbed(rel):
        return M.FeatureStats.from_moments(ref.mu, ref.sigma + rel * scale * noise, ref.n)

    assert perturbed(4.4e-8).agrees_with(ref)  # what another machine's rounding gives
    assert not perturbed(1e-3).agrees_with(ref)  # a real change
    shifted = M.FeatureStats.from_moments(ref.mu * (1 + 1e-3), ref.sigma, ref.n)
    assert not shifted.agrees_with(ref)
    assert not M.FeatureStats.from_moments(ref.mu[:10], ref.sigma[:10, :10]).agrees_with(ref)


def test_fd_floor_is_small_and_noise_is_far(fd):
    floor = fd.data_floor()
    noise = torch.randn(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    far = fd(noise)
    assert 0 < floor < 5
    assert far > 20 * floor
    # degrading the held-out images raises FD monotonically
    ho = load_digits("held_out").images
    blurred = torch.nn.functional.avg_pool2d(ho, 3, stride=1, padding=1, count_include_pad=False)
    assert fd(blurred) > floor
    assert fd(0.5 * ho + 0.5 * blurred) < fd(blurred)


def test_fd_streams_batches_and_checks_input(fd):
    images = load_digits("held_out").images
    whole = fd(images)
    streamed = fd(iter(torch.split(images, 40)))
    assert streamed == pytest.approx(whole, rel=1e-9)
    assert fd(fd.stats(images)) == pytest.approx(whole, rel=1e-12)
    with pytest.raises(ValueError, match="1 channel"):
        fd(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        fd(torch.full((4, 1, 8, 8), float("nan")))
    assert M.fd(images) == pytest.approx(whole, rel=1e-12)


def _frechet_by_eigendecomposition(a, b) -> float:
    """The Frechet distance of two Gaussians by symmetric eigendecompositions (numpy only), not by
    pytorch-fid's scipy.linalg.sqrtm: Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2)."""
    (mu1, s1), (mu2, s2) = a, b
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root @ s2 @ root)
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(cross, 0, None)))
    )


def test_data_floor_is_the_held_out_splits_distance_to_the_train_split():
    """Recomputed from scratch: the committed classifier's features of both splits, numpy's mean and
    covariance, and the Frechet distance by eigendecomposition (none of FD, FeatureStats, the cached
    reference file or pytorch-fid)."""
    net = clf.load().eval()

    def moments(split):
        with torch.no_grad():
            features = net.features(load_digits(split).images.float()).double().numpy()
        return features.mean(axis=0), np.cov(features, rowvar=False)

    held_out, train = moments("held_out"), moments("train")
    expected = _frechet_by_eigendecomposition(held_out, train)
    # float32 features computed in other batches (the cached reference: 1000 + 500) and another matrix square
    # root agree to ~1e-7 relative (measured 7.7e-8); dropping one of the 297 held-out images moves the floor
    # by 6e-3, so 1e-6 tells rounding from any change of data, split or classifier
    assert M.data_floor() == pytest.approx(expected, rel=1e-6)
    assert M.FD().data_floor() == pytest.approx(expected, rel=1e-6)


def test_fd_missing_reference_names_its_path(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "digits-train.npz"
    monkeypatch.setattr(M, "DIGITS_REFERENCE_PATH", missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        M.FD()


def test_reference_stats_missing_file_names_path_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        M.reference_stats("cifar10", directory=tmp_path)
    assert str(tmp_path / "cifar10-32x32.npz") in str(err.value)
    # made with pytorch-fid's Inception, the network that scores the samples; EDM's statistics are not
    assert "python -m pytorch_fid --save-stats" in str(err.value)
    assert "fid-refs/" not in str(err.value) and "do not use them" in str(err.value)
    with pytest.raises(ValueError, match="available"):
        M.reference_stats("mnist", directory=tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ffhq-64x64.npz", mu=rng.normal(size=2048), sigma=np.eye(2048))
    assert M.reference_stats("ffhq-64", directory=tmp_path).dim == 2048
    np.savez(tmp_path / "imagenet-64x64.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match="2048"):
        M.reference_stats("imagenet-64", directory=tmp_path)


def test_reference_statistics_are_looked_up_in_dode_fid_stats(tmp_path, monkeypatch):
    """A GPU box keeps the 2048-d statistics outside the checkout: $DODE_FID_STATS names the folder, an
    explicit directory beats it, and without either they are looked up in data/fid_stats."""
    monkeypatch.delenv("DODE_FID_STATS", raising=False)
    assert M.reference_stats_path("cifar10") == M.FID_STATS_DIR / "cifar10-32x32.npz"
    elsewhere = tmp_path / "stats"
    elsewhere.mkdir()
    mu = np.random.default_rng(0).normal(size=2048)
    np.savez(elsewhere / "cifar10-32x32.npz", mu=mu, sigma=np.eye(2048))
    monkeypatch.setenv("DODE_FID_STATS", str(elsewhere))
    assert M.reference_stats_path("cifar10") == elsewhere / "cifar10-32x32.npz"
    np.testing.assert_array_equal(M.reference_stats("cifar10").mu, mu)
    assert M.reference_stats_path("cifar10", directory=tmp_path) == tmp_path / "cifar10-32x32.npz"
    with pytest.raises(FileNotFoundError, match=str(elsewhere / "ffhq-64x64.npz")):
        M.reference_stats("ffhq-64")


# ---------------------------------------------------------------------------------------------------------
# FID with pytorch-fid's InceptionV3, on stand-in weights


def _fid_inception_architecture():
    """pytorch-fid's FID Inception, built as its fid_inception_v3 builds it, without loading weights."""
    from pytorch_fid import inception as pi

    net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pi.FIDInceptionE_1(1280)
    net.Mixed_7c = pi.FIDInceptionE_2(2048)
    return net


@pytest.fixture(scope="module")
def standin_torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random weights with the keys and shapes of the real file."""
    home = tmp_path_factory.mktemp("torch_home")
    target = home / "hub" / "checkpoints" / M.INCEPTION_WEIGHTS_FILE
    target.parent.mkdir(parents=True)
    torch.manual_seed(0)
    net = _fid_inception_architecture()
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)  # keep activations finite through 90-odd layers
    torch.save(net.state_dict(), target)
    return home


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


class _RecordingInception(torch.nn.Module):
    """Stands in for the Inception forward pass (seconds per image on a CPU): records its input and returns
    2048 features that depend on it, in pytorch-fid's output format (a list with one (B, 2048, 1, 1))."""

    def __init__(self):
        super().__init__()
        self.inputs = []
        self.proj = torch.randn(
            3 * 4 * 4, 2048, generator=torch.Generator().manual_seed(0), dtype=torch.float64
        )

    def forward(self, x):
        self.inputs.append(x.clone())
        # float64, so that features do not depend on how samples are batched
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.double(), 4).reshape(x.shape[0], -1)
        return [(pooled @ self.proj).reshape(x.shape[0], 2048, 1, 1)]


def test_fid_loads_its_weights_from_the_hub_cache(standin_torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    assert M.inception_weights_path() == standin_torch_home / "hub" / "checkpoints" / M.INCEPTION_WEIGHTS_FILE
    # pytorch-fid must find the file in the cache; a download would go through this function
    import torch.hub

    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pytorch-fid's network builds and runs without a warning on a page
        fid = M.FID(batch_size=2)
        fid.features(torch.zeros(2, 3, 8, 8))
    saved = torch.load(M.inception_weights_path(), weights_only=True)
    loaded = fid.model.blocks[0][0].conv.weight
    torch.testing.assert_close(loaded, saved["Conv2d_1a_3x3.conv.weight"], rtol=0, atol=0)


def _png_files(levels: torch.Tensor, folder) -> list[str]:
    """8-bit images (N, C, H, W) saved as PNG files, greyscale when C == 1, as a sampler's outputs are saved."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(levels.to(torch.uint8).numpy()):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        files.append(str(folder / f"{i}.png"))
    return files


@pytest.mark.parametrize("channels", [3, 1], ids=["rgb", "grey"])
def test_fid_features_are_pytorch_fids_own_on_the_same_weights(
    standin_torch_home, monkeypatch, tmp_path, channels
):
    """pytorch-fid's own pipeline is the exact reference: PNG files read by its ImagePathDataset (PIL,
    ToTensor, grey converted to RGB), its InceptionV3 built as its command line builds it, its
    get_activations and calculate_activation_statistics."""
    from pytorch_fid.fid_score import calculate_activation_statistics, get_activations
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    # samples on the 8-bit grid, so that the PNG files hold exactly the levels dode quantizes them to
    levels = torch.randint(0, 256, (3, channels, 16, 16), generator=torch.Generator().manual_seed(channels))
    samples = levels / 127.5 - 1
    files = _png_files(levels, tmp_path / "png")
    # the same batches on both sides (3 images, one batch): a batch-dependent kernel choice is not tested here
    fid = M.FID(batch_size=3)
    ours = fid.features(samples).numpy()
    reference_net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    theirs = get_activations(files, reference_net, batch_size=3, dims=2048, device="cpu", num_workers=0)
    # the same float32 network on the same inputs: at most float32 rounding apart (2^-23 = 1.2e-7 relative per
    # operation; measured bit-identical). One 8-bit level of one pixel moves the features by 1.7e-4 of their
    # largest, so 1e-6 of it separates rounding from any difference of input mapping or weights
    scale = np.abs(theirs).max()
    assert scale > 0 and np.std(theirs) > 0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * scale)
    mu, sigma = calculate_activation_statistics(files, reference_net, batch_size=3, dims=2048, num_workers=0)
    stats = fid.stats(samples)
    np.testing.assert_allclose(stats.mu, mu, rtol=0, atol=1e-6 * np.abs(mu).max())
    np.testing.assert_allclose(stats.sigma, sigma, rtol=0, atol=1e-6 * np.abs(sigma).max())


def test_fid_maps_images_and_streams(standin_torch_home, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    fid = M.FID(batch_size=4)
    fid.model = recorder = _RecordingInception()
    gen = torch.Generator().manual_seed(1)
    samples = torch.rand(6, 3, 8, 8, generator=gen) * 2.4 - 1.2  # overshoots [-1, 1] a little
    fid.features(samples)
    seen = torch.cat(recorder.inputs)
    # [-1, 1] -> [0, 1], clipped, rounded to 8 bits as a saved PNG would be; pytorch-fid resizes and rescales
    expected = torch.round(((samples + 1) / 2).clamp(0, 1) * 255) / 255
    torch.testing.assert_close(seen, expected, rtol=0, atol=0)
    assert [x.shape[0] for x in recorder.inputs] == [4, 2]
    # grey images are replicated to three channels
    grey = samples[:, :1]
    torch.testing.assert_close(fid.features(grey), fid.features(grey.expand(-1, 3, -1, -1)))
    # streamed batches give the same statistics
    many = torch.rand(64, 3, 8, 8, generator=gen) * 2 - 1
    ref = fid.stats(many)
    streamed = fid.stats(iter(torch.split(many, 10)))
    np.testing.assert_allclose(streamed.sigma, ref.sigma, rtol=1e-9, atol=1e-9)
    # the 2048-d matrix square root takes minutes on a shared CPU, so the distance itself is checked on small
    # dimensions (test_frechet_distance_*); here: the right statistics reach it
    compared = []
    monkeypatch.setattr(M, "frechet_distance", lambda a, b, device: compared.append((a, b, device)) or 42.0)
    assert fid(many[:10], reference=ref) == 42.0
    np.testing.assert_allclose(compared[0][0].mu, fid.stats(many[:10]).mu, rtol=1e-12)
    assert compared[0][1] is ref
    assert (
        compared[0][2] == fid.device
    )  # the distance is computed where the features are (a GPU's run: there)
    path = ref.save(tmp_path / "ref.npz")
    assert fid(ref, reference=path) == 42.0
    np.testing.assert_allclose(compared[1][1].sigma, ref.sigma, rtol=1e-12)
    with pytest.raises(ValueError, match="no reference statistics"):
        fid(many)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        fid.features(torch.zeros(2, 2, 8, 8))


def test_fid_without_weights_says_where_they_go(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import pytorch_fid.inception

    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", _no_download)
    with pytest.raises(M.InceptionWeightsMissing) as err:
        M.FID()
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth") in message
    assert M.INCEPTION_WEIGHTS_URL in message


# ---------------------------------------------------------------------------------------------------------
# L2 to a reference trajectory


def test_l2_to_reference():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    offsets = torch.arange(5, dtype=torch.float64)
    samples = ref + offsets.reshape(5, 1, 1, 1) / 8.0  # every pixel moved by k / 8: distance k
    dist = M.l2_distances(samples.float(), ref)
    assert dist.dtype == torch.float64 and dist.shape == (5,)
    torch.testing.assert_close(dist, offsets, atol=1e-6, rtol=0)
    assert M.l2_to_reference(samples, ref) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same shape"):
        M.l2_distances(samples[:4], ref)


def test_classifier_card_is_json():
    card = json.loads(clf.CLASSIFIER_PATH.with_suffix(".json").read_text())
    for key in ("held_out_accuracy", "steps", "seed", "wall_time_s", "sha256", "git_commit"):
        assert key in card
