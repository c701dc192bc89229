"""The D-scheduler inside diffusers pipelines reproduces dode.sample exactly.

Exact means ``torch.equal``: the pipeline calls its UNet on dode's float64 state cast to float32 at the
float32 timestep dode's own diffusers wrapper hands the UNet, and the solver arithmetic is dode's own loop,
so every operation and operand is the same as in :func:`dode.sample` (on the CPU, where the kernels are
deterministic). A single differing bit anywhere fails these tests.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

import dode

diffusers = pytest.importorskip("diffusers")

from conftest import tiny_unet  # noqa: E402
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

from dode.integrations.diffusers import DODEScheduler, fit_lambdas  # noqa: E402
from dode.zoo import diffusers_denoiser  # noqa: E402

BATCH, SIZE = 2, 8


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return tiny_unet(SIZE)


def _lambdas(solver: str, nfe: int, first: bool = True) -> dode.Lambdas:
    """Distinct non-zero lambdas; ``first=False``: data prediction, whose first evaluation has none."""
    values = 0.3 * np.cos(np.arange(nfe) + 1.0)
    if not first:
        values[0] = np.nan
    return dode.Lambdas(values, solver=solver, nfe=nfe, grid="None")


def _noise(seed: int = 3) -> torch.Tensor:
    # what DDPMPipeline/DDIMPipeline draw with a CPU generator (diffusers' randn_tensor)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _run_pipeline(pipe, nfe: int, seed: int = 3):
    """The pipeline's images and every state its scheduler returned (before the final postprocessing)."""
    pipe.set_progress_bar_config(disable=True)
    states, samples = [], []
    step = pipe.scheduler.step

    def spy(model_output, timestep, sample, **kwargs):
        samples.append(sample)
        out = step(model_output, timestep, sample, **kwargs)
        states.append(out.prev_sample)
        return out

    pipe.scheduler.step = spy
    images = pipe(
        batch_size=BATCH,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=nfe,
        output_type="np",
    ).images
    assert len(states) == nfe
    assert torch.equal(samples[0], _noise(seed))  # the pipeline started from the noise dode gets
    return images, states


def _postprocess(x: torch.Tensor) -> np.ndarray:
    # the pipelines' own postprocessing, applied to dode's sample
    return (x.to(torch.float32) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    "pipeline, solver, nfe, prediction_type",
    [
        (DDPMPipeline, "ddim", 5, "epsilon"),
        (DDIMPipeline, "dpm_solver++", 6, "epsilon"),
        (DDPMPipeline, "ipndm", 6, "epsilon"),
        (DDIMPipeline, "dpm_solver++", 5, "sample"),
    ],
)
def test_pipeline_with_the_d_scheduler_reproduces_dode_sample(unet, pipeline, solver, nfe, prediction_type):
    config = DDPMScheduler(prediction_type=prediction_type).config
    lambdas = _lambdas(solver, nfe, first=prediction_type == "epsilon")
    pipe = pipeline(unet=unet, scheduler=DDPMScheduler.from_config(config))
    pipe.scheduler = DODEScheduler.from_config(config, lambdas=lambdas)
    images, states = _run_pipeline(pipe, nfe)

    den = diffusers_denoiser(unet, config)
    expected = dode.sample(den, _noise(), solver=solver, nfe=nfe, lambdas=lambdas)
    assert torch.equal(states[-1], expected.to(torch.float32))
    assert np.array_equal(images, _postprocess(expected))
    # the lambdas matter: the base solver lands elsewhere (so the equality above is not a coincidence)
    base = dode.sample(den, _noise(), solver=solver, nfe=nfe)
    assert (base - expected).abs().max() > 1e-3
    # the intermediate states too: each step returned dode's state at its next network evaluation
    trajectory = dode.sample(den, _noise(), solver=solver, nfe=nfe, lambdas=lambdas, trajectory=True)
    for k, state in enumerate(states[:-1]):
        assert torch.equal(state, trajectory.states[k + 1].to(torch.float32))


def test_a_guided_loop_calling_step_on_the_combined_output_reproduces_dode_sample():
    """Classifier-free guidance: the loop evaluates a conditional and a null-class batch and hands step their
    combination, once per evaluation."""
    unet = tiny_unet(SIZE, num_class_embeds=4)
    labels = torch.tensor([1, 2] + [3] * BATCH)  # class 3 plays the null class
    scale, solver, nfe = 3.0, "dpm_solver++", 6

    def guided(cond_and_null: torch.Tensor) -> torch.Tensor:
        cond, null = cond_and_null.chunk(2)
        return null + scale * (cond - null)

    lambdas = _lambdas(solver, nfe)
    sched = DODEScheduler.from_config(DDPMScheduler().config, lambdas=lambdas)
    sched.set_timesteps(nfe)
    x = _noise() * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            x = sched.step(guided(unet(inp, t, class_labels=labels).sample), t, x).prev_sample

    def network(x, t):
        return guided(unet(torch.cat([x, x]), torch.cat([t, t]), class_labels=labels).sample)

    den = dode.Denoiser(network, dode.zoo.vp_schedule_from_scheduler_config(DDPMScheduler().config))
    expected = dode.sample(den, _noise(), solver=solver, nfe=nfe, lambdas=lambdas)
    assert torch.equal(x, expected.to(torch.float32))


def test_ditpipeline_with_guidance_reproduces_dode_sample():
    """diffusers' own guided pipeline: DiT steps the doubled batch (both halves get the guided output) and
    decodes the first half with its VAE."""
    from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=SIZE,
        num_layers=1,
        patch_size=4,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,  # DiT's learned variance: the pipeline hands step the first 4 channels
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    ).eval()
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4).eval()
    solver, nfe, scale, classes = "dpm_solver++", 5, 2.0, [1, 2]
    lambdas = _lambdas(solver, nfe)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DODEScheduler(lambdas=lambdas))
    pipe.set_progress_bar_config(disable=True)
    states = []
    step = pipe.scheduler.step

    def spy(*args, **kwargs):
        out = step(*args, **kwargs)
        states.append(out.prev_sample)
        return out

    pipe.scheduler.step = spy
    generator = torch.Generator().manual_seed(3)
    images = pipe(
        class_labels=classes,
        guidance_scale=scale,
        generator=generator,
        num_inference_steps=nfe,
        output_type="pt",
    ).images

    labels = torch.tensor(classes + [1000] * len(classes))  # DiT's null class

    def network(x, t):
        eps = transformer(torch.cat([x, x]), timestep=torch.cat([t, t]), class_labels=labels).sample[:, :4]
        cond, null = eps.chunk(2)
        return null + scale * (cond - null)

    den = dode.Denoiser(network, dode.VPSchedule.linear())
    noise = torch.randn(len(classes), 4, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    expected = dode.sample(den, noise, solver=solver, nfe=nfe, lambdas=lambdas).to(torch.float32)
    assert torch.equal(states[-1], torch.cat([expected, expected]))
    with torch.no_grad():
        decoded = vae.decode(1 / vae.config.scaling_factor * expected).sample  # as the pipeline does
    assert torch.equal(images, (decoded / 2 + 0.5).clamp(0, 1))


def test_fit_lambdas_is_dode_distill_on_the_pipelines_unet(unet):
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    lambdas = fit_lambdas(pipe, solver="ipndm", nfe=5, n=4, K=2, seed=1)
    noise = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    den = diffusers_denoiser(unet, pipe.scheduler.config)
    direct = dode.distill(den, noise, solver="ipndm", nfe=5, K=2, seed=1)
    np.testing.assert_array_equal(lambdas.values, direct.values)
    assert np.all(np.abs(lambdas.values) > 1e-6)
    assert (lambdas.solver, lambdas.nfe, lambdas.K, lambdas.B, lambdas.seed) == ("ipndm", 5, 2, 4, 1)
    # the UNet with a config is the same fit
    again = fit_lambdas(unet, pipe.scheduler.config, solver="ipndm", nfe=5, n=4, K=2, seed=1)
    np.testing.assert_array_equal(again.values, lambdas.values)
    with pytest.raises(ValueError, match="scheduler_config is required"):
        fit_lambdas(unet, solver="ipndm", nfe=5)
    with pytest.raises(ValueError, match="n must be an integer"):
        fit_lambdas(pipe, n=0)
    with pytest.raises(TypeError, match="UNet2DModel"):
        fit_lambdas(torch.nn.Linear(2, 2), pipe.scheduler.config)

    # the scheduler takes solver and grid from the fitted lambdas, and reproduces the D-solver
    pipe.scheduler = DODEScheduler.from_config(pipe.scheduler.config, lambdas=lambdas)
    assert pipe.scheduler.solver == "ipndm"
    _, states = _run_pipeline(pipe, 5)
    expected = dode.sample(den, _noise(), solver="ipndm", nfe=5, lambdas=lambdas)
    assert torch.equal(states[-1], expected.to(torch.float32))


def test_the_base_scheduler_on_ddims_timesteps_is_diffusers_ddim(unet):
    """An independent check of what the UNet is given: without lambdas, on the timesteps of diffusers'
    DDIMScheduler ("trailing", ending at alphas_cumprod[0]), the D-scheduler's DDIM is diffusers' DDIM.
    diffusers computes its alphas in float32, dode in float64: they agree to float32 rounding."""
    nfe = 5
    ddim = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)
    pipe = DDIMPipeline(unet=unet, scheduler=ddim)
    theirs, _ = _run_pipeline(pipe, nfe)
    grid = [999.0, 799.0, 599.0, 399.0, 199.0, 0.0]
    assert pipe.scheduler.timesteps.tolist() == grid[:-1]
    pipe.scheduler = DODEScheduler.from_config(ddim.config, solver="ddim", grid=grid)
    ours, _ = _run_pipeline(pipe, nfe)
    assert pipe.scheduler.timesteps.tolist() == grid[:-1]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_the_config_round_trips_the_lambdas(tmp_path):
    assert dode.integrations.diffusers.DODEScheduler is DODEScheduler  # reachable lazily from dode
    lambdas = _lambdas("dpm_solver++", 5, first=False)
    grid = [999.0, 700.0, 400.0, 200.0, 50.0, 0.0]
    sched = DODEScheduler(prediction_type="sample", grid=grid, lambdas=lambdas)
    sched.save_config(tmp_path)
    loaded = DODEScheduler.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.lambdas.values, lambdas.values)  # NaN included
    assert loaded.lambdas.metadata() == lambdas.metadata()
    assert (loaded.solver, loaded.grid, loaded.prediction) == ("dpm_solver++", grid, "x0")
    # lambdas fitted on an explicit grid bring it along
    fitted = dode.Lambdas(lambdas.values, solver="dpm_solver++", nfe=5, grid=dode.grids.grid_key(grid))
    assert DODEScheduler(lambdas=fitted).grid == grid


def test_bad_use_is_refused_with_clear_errors(unet):
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        DODEScheduler(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="solver must be one of"):
        DODEScheduler(solver="euler")
    with pytest.raises(TypeError, match="lambdas must be a dode.Lambdas"):
        DODEScheduler(lambdas=[0.1, 0.2])
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        DODEScheduler.from_config(DDPMScheduler(rescale_betas_zero_snr=True).config)

    sched = DODEScheduler(lambdas=_lambdas("ddim", 4))
    with pytest.raises(ValueError, match=r"nfe 4 \(asked: 5\)"):
        sched.set_timesteps(5)
    x = _noise()
    out = torch.zeros_like(x)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(out, 999, x)
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match="eta must be 0"):
        sched.step(out, sched.timesteps[0], x, eta=0.5)
    with pytest.raises(ValueError, match=r"timesteps\[0\]"):
        sched.step(out, 999 - 1, x)
    x = sched.step(out, sched.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="sample must be the prev_sample"):
        sched.step(out, sched.timesteps[1], x + 1)
    for t in sched.timesteps[1:]:
        x = sched.step(out, t, x).prev_sample
    with pytest.raises(RuntimeError, match="more than the 4 planned"):
        sched.step(out, sched.timesteps[-1], x)

    # an error of dode's loop (a non-finite network output, checked once at the end of the run so that a
    # GPU is not synchronised per evaluation) is raised by the last step, naming the first bad evaluation
    sched.set_timesteps(4)
    x = _noise()
    for t in sched.timesteps[:-1]:
        x = sched.step(out, t, x).prev_sample
    with pytest.raises(FloatingPointError, match="non-finite network output at evaluation 3"):
        sched.step(torch.full_like(x, float("nan")), sched.timesteps[-1], x)
    with pytest.raises(RuntimeError, match="has ended or failed"):
        sched.step(out, sched.timesteps[-1], x)


def _workers() -> int:
    return sum(t.name == "dode-scheduler" for t in threading.enumerate())


def test_an_abandoned_run_ends_its_worker():
    before = _workers()
    sched = DODEScheduler()
    sched.set_timesteps(5)
    x = _noise()
    sched.step(torch.zeros_like(x), sched.timesteps[0], x)
    assert _workers() == before + 1
    sched.set_timesteps(5)  # a new run: the old worker is cancelled
    assert _workers() == before
    sched.step(torch.zeros_like(x), sched.timesteps[0], x)
    assert _workers() == before + 1
    del sched  # dropping the scheduler mid-run ends the worker too
    gc.collect()
    assert _workers() == before
