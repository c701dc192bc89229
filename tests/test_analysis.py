"""The analysis quantities of Fig. 2, 5, 7 and 11 (dode.companion.analysis), on the exact Gaussian-mixture test bed."""

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise

import dode
from dode.companion import analysis


def test_cosine_matrix_is_symmetric_with_unit_diagonal_and_equals_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(6, 5, 1, 3, 3, generator=g, dtype=torch.float64)
    outputs[3] = outputs[2] * torch.tensor([2.0, 0.5, 1.0, 3.0, 7.0]).reshape(5, 1, 1, 1)  # rescaled copy
    outputs[4] = -outputs[1]
    S = analysis.cosine_similarity_matrix(outputs)
    assert S.shape == (6, 6)
    np.testing.assert_allclose(S, S.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-12)
    flat = outputs.reshape(6, 5, -1)
    direct = np.array(
        [
            [
                np.mean(
                    [torch.nn.functional.cosine_similarity(flat[i, b], flat[j, b], dim=0) for b in range(5)]
                )
                for j in range(6)
            ]
            for i in range(6)
        ]
    )
    np.testing.assert_allclose(S, direct, atol=1e-12)
    # per-sample normalisation: a per-sample rescaled copy is perfectly similar, a negated one opposite
    assert S[2, 3] == pytest.approx(1.0) and S[1, 4] == pytest.approx(-1.0)
    assert np.all(np.abs(S) <= 1 + 1e-12)


def test_cosine_matrix_refuses_zero_outputs_and_wrong_shapes():
    with pytest.raises(ValueError, match="zero"):
        analysis.cosine_similarity_matrix(torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match="steps, batch"):
        analysis.cosine_similarity_matrix(torch.ones(3, 4))


@pytest.mark.parametrize(
    "schedule_name,solver,nfe", [("vp", "ddim", 10), ("edm", "edm", 7), ("vp", "ipndm", 6)]
)
def test_trajectory_ends_at_the_samples_and_its_norms_are_the_state_norms(gmm, schedule_name, solver, nfe):
    den = gmm.denoiser(SCHEDULES[schedule_name], "eps" if schedule_name == "vp" else "x0")
    noise = make_noise(16)
    tr = dode.sample(den, noise, solver, nfe, trajectory=True)
    samples = dode.sample(den, noise, solver, nfe)
    torch.testing.assert_close(tr.states[-1], samples, rtol=0, atol=0)
    torch.testing.assert_close(tr.x, samples, rtol=0, atol=0)
    assert tr.states.shape[0] == nfe + 1 and tr.outputs.shape[0] == nfe
    norms = analysis.state_norms(tr.states)
    assert norms.shape == (nfe + 1, 16)
    np.testing.assert_allclose(norms[-1], samples.norm(dim=1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(norms[0], tr.states[0].norm(dim=1).numpy(), rtol=1e-12)


def test_pixels_are_distinct_reproducible_and_read_where_they_point():
    shape = (3, 4, 5)
    pixels = analysis.pick_pixels(shape, 6, seed=3)
    assert pixels.shape == (6, 3)
    assert len({tuple(p) for p in pixels}) == 6
    assert np.all(pixels >= 0) and np.all(pixels < np.array(shape))
    np.testing.assert_array_equal(pixels, analysis.pick_pixels(shape, 6, seed=3))
    assert not np.array_equal(pixels, analysis.pick_pixels(shape, 6, seed=4))
    states = torch.randn(7, 2, *shape, generator=torch.Generator().manual_seed(1))
    values = analysis.pixel_values(states, pixels)
    assert values.shape == (7, 2, 6)
    for m, (c, h, w) in enumerate(pixels):
        np.testing.assert_array_equal(values[:, :, m], states[:, :, c, h, w].double().numpy())
    with pytest.raises(ValueError, match="between 1 and"):
        analysis.pick_pixels(shape, 61, seed=0)
    with pytest.raises(ValueError, match="pixels must have shape"):
        analysis.pixel_values(states, pixels[:, :2])


def test_interpolation_is_exact_on_the_grid_and_linear_in_between():
    times = torch.tensor([10.0, 7.0, 3.0, 0.0], dtype=torch.float64)
    slope, offset = torch.randn(2, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    states = offset + times.reshape(-1, 1, 1) * slope  # (4 times, 1 sample, 4 "pixels"), linear in t
    at = torch.tensor([10.0, 8.5, 7.0, 1.0, 0.0], dtype=torch.float64)
    out = analysis.interpolate_states(times, states, at)
    torch.testing.assert_close(out, offset + at.reshape(-1, 1, 1) * slope, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[2], states[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside"):
        analysis.interpolate_states(times, states, torch.tensor([11.0]))


def test_distance_to_a_finer_run_starts_at_zero_and_shrinks_with_more_steps(gmm):
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    noise = make_noise(32)
    reference = dode.sample(den, noise, "ddim", 400, trajectory=True)
    assert np.all(analysis.distance_to_reference(reference, reference) == 0)
    coarse = analysis.distance_to_reference(dode.sample(den, noise, "ddim", 5, trajectory=True), reference)
    finer = analysis.distance_to_reference(dode.sample(den, noise, "ddim", 20, trajectory=True), reference)
    assert coarse.shape == (6, 32)
    np.testing.assert_allclose(coarse[0], 0, atol=1e-12)  # same noise, same start
    assert finer[-1].mean() < coarse[-1].mean()
    with pytest.raises(ValueError, match="same noise"):
        analysis.distance_to_reference(dode.sample(den, noise[:4], "ddim", 5, trajectory=True), reference)


def test_variants_fitted_on_one_teacher_run_equal_separate_fits(gmm):
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    noise = make_noise(64, seed=5)
    fitted = analysis.fit_variants(den, noise, "ddim", 6, ["d-ode", "sep"], K=4, seed=5)
    assert set(fitted) == {"d-ode", "sep"}
    for variant, (lam, seconds) in fitted.items():
        alone = dode.distill(den, noise, "ddim", 6, K=4, variant=variant, seed=5)
        np.testing.assert_array_equal(lam.values, alone.values)
        assert lam.variant == variant and seconds > 0
    # a teacher run of another plan is refused
    from dode.distill import teacher_targets

    other = teacher_targets(den, noise, dode.make_plan(den.schedule, "ddim", 5, None, {}), 4)
    with pytest.raises(ValueError, match="teacher_run"):
        dode.distill(den, noise, "ddim", 6, K=4, teacher_run=other)
