"""Progressive distillation (Salimans & Ho 2022) of an EDM model: the halving schedule, the nested grids, the
Eq. (2) target, a miniature run on the miniature EDM digits model, and resuming from saved students."""

from __future__ import annotations

import pytest
import torch

import dode
from dode import zoo
from dode.zoo import progressive as pd
from dode.zoo.data import load_digits


@pytest.fixture(scope="module")
def mini():
    return zoo.load("digits-edm-mini")


@pytest.fixture(scope="module")
def images():
    return load_digits("train").images.to(torch.float32)


# ---------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    "start,end,expected",
    [
        (32, 2, [16, 8, 4, 2]),
        (16, 2, [8, 4, 2]),
        (8, 4, [4]),
        (12, 3, [6, 3]),
        (1024, 1, [2**k for k in range(9, -1, -1)]),
    ],
)
def test_each_halving_halves_the_steps_down_to_steps_end(start, end, expected):
    assert pd.halving_steps(start, end) == expected


@pytest.mark.parametrize("start,end", [(6, 2), (8, 8), (4, 8), (8, 3), (0, 2), (8, 0), (8.0, 2), (True, 1)])
def test_a_schedule_that_does_not_halve_down_to_steps_end_is_refused(start, end):
    with pytest.raises(ValueError, match="steps_start|steps_end"):
        pd.halving_steps(start, end)


def test_every_level_samples_on_a_subset_of_its_teachers_grid():
    sched = dode.EDMSchedule()
    start = 32
    full = pd.pd_grid(sched, start, start)
    # the first teacher samples on dode's own EDM grid
    torch.testing.assert_close(full, dode.make_grid(sched, "edm", start), rtol=0, atol=0)
    for steps in pd.halving_steps(start, 1):
        student, teacher = pd.pd_grid(sched, start, steps), pd.pd_grid(sched, start, 2 * steps)
        assert len(student) == steps + 1
        assert student[0] == sched.t_max and student[-1] == 0
        assert torch.all(student[1:] < student[:-1])
        # nested: the student's times are every other time of its teacher's grid
        torch.testing.assert_close(student, teacher[::2], rtol=0, atol=0)
        assert set(student.tolist()) <= set(teacher.tolist())


@pytest.mark.parametrize("steps", [0, 3, 2.0])
def test_pd_grid_refuses_a_step_count_that_does_not_divide_the_start(steps):
    with pytest.raises(ValueError, match="steps"):
        pd.pd_grid(dode.EDMSchedule(), 8, steps)


# ---------------------------------------------------------------------------------------------- target


def test_one_step_with_the_eq2_target_lands_exactly_on_the_teachers_two_step_result():
    g = torch.Generator().manual_seed(0)
    x_s = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64) * 3
    x_teacher = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    s = torch.tensor([80.0, 10.0, 2.0, 0.5, 0.1, 0.01], dtype=torch.float64)
    t = torch.tensor([20.0, 3.0, 0.0, 0.2, 0.0, 0.002], dtype=torch.float64)  # t = 0: the target is x_teacher
    target = pd.student_target(x_s, x_teacher, s, t)
    torch.testing.assert_close(pd.ddim_sigma_step(x_s, target, s, t), x_teacher, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target[[2, 4]], x_teacher[[2, 4]], rtol=0, atol=0)


def test_the_teachers_two_steps_are_dode_samplers_ddim_steps(mini):
    """Training targets come from the same update that samples the students (no second sampler)."""
    noise = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    grid = pd.pd_grid(mini.schedule, 4, 2)
    s, m, t = (torch.full((5,), float(v), dtype=torch.float64) for v in grid)
    by_trainer = pd.teacher_two_steps(mini.fn, noise.double() * grid[0], s, m, t)
    by_sampler = dode.sample(mini, noise, "ddim", 2, grid=grid)
    torch.testing.assert_close(by_trainer, by_sampler, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- training

MINI_RUN = dict(steps_start=4, steps_end=2, batch_size=32, ema_decay=0.0, lr=1e-3, progress=False)


def landing_error(student, teacher, x0, eps, teacher_grid) -> torch.Tensor:
    """Mean squared distance, per student step, between the student's one step and the teacher's two steps
    from the same noised images."""
    errors = []
    for i in range(0, len(teacher_grid) - 1, 2):
        s, m, t = (
            torch.full((len(x0),), float(teacher_grid[j]), dtype=torch.float64) for j in (i, i + 1, i + 2)
        )
        x_s = x0.double() + s.reshape(-1, 1, 1, 1) * eps
        two_steps = pd.teacher_two_steps(teacher, x_s, s, m, t)
        with torch.no_grad():
            d = student(x_s.float(), s.float()).double()
        errors.append((pd.ddim_sigma_step(x_s, d, s, t) - two_steps).pow(2).mean())
    return torch.stack(errors)


def test_a_miniature_run_brings_the_students_one_step_closer_to_the_teachers_two(mini, images):
    batch = images[:32]
    [halving] = pd.progressive_distillation(mini, data=batch, iterations_per_halving=30, **MINI_RUN)
    assert halving.steps == 2 and halving.record["teacher_steps"] == 4
    assert halving.denoiser.info["pd_steps"] == 2
    eps = torch.randn(batch.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grid = pd.pd_grid(mini.schedule, 4, 4)
    before = landing_error(mini.fn, mini.fn, batch, eps, grid)  # the student starts as a copy of the teacher
    after = landing_error(halving.denoiser.fn, mini.fn, batch, eps, grid)
    assert after.sum() < 0.7 * before.sum(), f"before {before.tolist()}, after {after.tolist()}"
    assert halving.record["loss_final"] < halving.record["loss_first"]
    # the teacher network is left as it was
    assert mini.fn.training is False and not any(p.requires_grad for p in mini.fn.parameters())


def test_students_saved_in_checkpoint_dir_are_reused_without_training(mini, images, tmp_path, monkeypatch):
    run = dict(MINI_RUN, steps_start=8, iterations_per_halving=2, data=images[:64])
    first = pd.progressive_distillation(mini, checkpoint_dir=tmp_path, **run)
    assert [h.steps for h in first] == [4, 2] and [h.record["resumed"] for h in first] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pd-0002.json",
        "pd-0002.safetensors",
        "pd-0004.json",
        "pd-0004.safetensors",
    ]

    def no_training(*args, **kwargs):
        raise AssertionError("a saved student was trained again")

    monkeypatch.setattr(pd, "_train_halving", no_training)
    again = pd.progressive_distillation(mini, checkpoint_dir=tmp_path, **run)
    assert [h.record["resumed"] for h in again] == [1, 1]
    for old, new in zip(first, again, strict=True):
        assert new.record["sha256"] == old.record["sha256"]
        assert new.record["train_seconds"] == old.record["train_seconds"]
        assert new.record["cumulative_train_seconds"] == old.record["cumulative_train_seconds"]
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(pd.sample_student(again[-1], noise, 8), pd.sample_student(first[-1], noise, 8))
    # another recipe is another student: it must be trained, not loaded
    with pytest.raises(AssertionError, match="trained again"):
        pd.progressive_distillation(mini, checkpoint_dir=tmp_path, **dict(run, lr=5e-4))


def test_an_interrupted_halving_resumes_where_it_stopped_and_ends_identical(
    mini, images, tmp_path, monkeypatch
):
    run = dict(MINI_RUN, iterations_per_halving=4, data=images[:64], ema_decay=0.9)
    [reference] = pd.progressive_distillation(mini, **run)

    calls = {"n": 0}
    update = pd.EMA.update

    def crash_on_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        update(self)

    monkeypatch.setattr(pd.EMA, "update", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        pd.progressive_distillation(mini, checkpoint_dir=tmp_path, checkpoint_every=2, **run)
    assert (tmp_path / "pd-0002.ckpt.pt").is_file() and not (tmp_path / "pd-0002.json").exists()
    monkeypatch.setattr(pd.EMA, "update", update)
    [resumed] = pd.progressive_distillation(mini, checkpoint_dir=tmp_path, checkpoint_every=2, **run)
    assert resumed.record["resumed_at_iterations"] == [2]
    assert resumed.record["sha256"] == reference.record["sha256"]
    assert not (tmp_path / "pd-0002.ckpt.pt").exists()


def test_evaluate_results_join_the_record_outside_the_timed_training(mini, images):
    seen = []

    def evaluate(halving):
        seen.append(halving.steps)
        return {"fd": 1.5}

    out = pd.progressive_distillation(
        mini, data=images[:32], iterations_per_halving=1, evaluate=evaluate, **dict(MINI_RUN, steps_start=8)
    )
    assert seen == [4, 2] and all(h.record["fd"] == 1.5 for h in out)
    total = sum(h.record["train_seconds"] for h in out)
    assert out[-1].record["cumulative_train_seconds"] == pytest.approx(total, abs=2e-3)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(loss_weight="l2"), "loss_weight must be one of"),
        (dict(lr_schedule="cosine"), "lr_schedule must be one of"),
        (dict(steps_start=6, steps_end=2), "power of two"),
        (dict(iterations_per_halving=0), "iterations_per_halving"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(batch_size=64), "N >= batch_size=64"),
        (dict(checkpoint_every=0), "checkpoint_every"),
    ],
)
def test_bad_recipes_are_refused_naming_the_parameter(mini, images, options, match):
    run = dict(MINI_RUN, data=images[:32], iterations_per_halving=1) | options
    with pytest.raises(ValueError, match=match):
        pd.progressive_distillation(mini, **run)


def test_only_edm_data_prediction_models_are_distilled(images):
    vp = zoo.load("digits-eps-mini")
    with pytest.raises(ValueError, match="EDM data-prediction"):
        pd.progressive_distillation(vp, data=images[:32], **MINI_RUN)
    gmm_like = dode.Denoiser(lambda x, t: x, dode.EDMSchedule(), "x0")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        pd.progressive_distillation(gmm_like, data=images[:32], **MINI_RUN)


def test_non_embedded_models_need_their_training_images():
    net = zoo.load("digits-edm-mini")
    den = dode.Denoiser(net.fn, net.schedule, "x0", name="custom")
    with pytest.raises(ValueError, match="data is required"):
        pd.progressive_distillation(den, **MINI_RUN)
