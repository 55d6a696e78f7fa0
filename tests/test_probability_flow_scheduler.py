"""ProbabilityFlowScheduler inside Diffusers loops, against exact scores and the pure ODE sampler."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    ScoreSdeVeScheduler,
    UNet2DModel,
)

from sde_diffusers import ExactScoreModel, SubVPSDEScheduler, VESDEScheduler
from sde_diffusers.sampling.ode import sample_probability_flow_fixed
from sde_diffusers.schedulers.scheduling_probability_flow import ProbabilityFlowScheduler
from sde_diffusers.sde import VESDE, VPSDE, SubVPSDE

MEANS = [[[[0.3, -0.2], [0.0, 0.5]]]]  # one 1x2x2 Gaussian, well inside [-1, 1] so DDPMPipeline's clamp is inert
STD = 0.15


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_gaussian(x: torch.Tensor, n_sigma: float = 6.0, rel_std: float = 0.06) -> None:
    x = x.reshape(x.shape[0], -1).double()
    mean = torch.tensor(MEANS, dtype=torch.float64).reshape(-1)
    assert ((x.mean(0) - mean).abs() < n_sigma * STD / math.sqrt(len(x))).all(), x.mean(0)
    assert ((x.std(0) / STD - 1).abs() < rel_std).all(), x.std(0)


class CountingModel(ExactScoreModel):
    """ExactScoreModel that counts its calls."""

    calls = 0

    def forward(self, sample, timestep, return_dict=True):
        type(self).calls += 1
        return super().forward(sample, timestep, return_dict)


def hand_loop(scheduler, model, n_steps, batch, seed=0, x=None):
    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(n_steps)
    if x is None:
        x = torch.randn(batch, 1, 2, 2, generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(out, t, x, generator=gen).prev_sample
    return x


@pytest.mark.parametrize("sde_type", ["ve", "vp", "subvp"])
@pytest.mark.parametrize(
    "solver,spacing,steps", [("euler", "karras", 200), ("heun", "karras", 40), ("heun", "uniform", 80)]
)
def test_hand_written_loop_samples_the_data(sde_type, solver, spacing, steps):
    scheduler = ProbabilityFlowScheduler(sde_type=sde_type, solver=solver, spacing=spacing)
    model = ExactScoreModel(MEANS, STD, sde_type=sde_type, prediction_type=scheduler.config.prediction_type)
    check_gaussian(hand_loop(scheduler, model, steps, 3000))


@pytest.mark.parametrize("sde_type", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_scheduler_loop_is_the_pure_sampler(sde_type, solver):
    """The scheduler only keeps timesteps: its loop equals sample_probability_flow_fixed step for step."""
    scheduler = ProbabilityFlowScheduler(sde_type=sde_type, solver=solver, spacing="karras")
    model = ExactScoreModel(MEANS, STD, sde_type=sde_type, prediction_type=scheduler.config.prediction_type)
    x_T = (
        torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        * scheduler.init_noise_sigma
    )
    out = hand_loop(scheduler, model.double(), 7, 16, x=x_T)
    ref = sample_probability_flow_fixed(
        model.mixture.score_fn(scheduler.sde),
        scheduler.sde,
        x_T,
        num_steps=7,
        solver=solver,
        spacing="karras",
    )
    # the model sees float32 timesteps (as in any Diffusers loop), the pure sampler float64 times
    torch.testing.assert_close(out, ref.sample, rtol=1e-5, atol=1e-5)
    assert len(scheduler.timesteps) == ref.nfe


@pytest.mark.parametrize("pipeline_cls", [DDPMPipeline, DDIMPipeline])
@pytest.mark.parametrize("sde_type", ["vp", "subvp"])
def test_swap_into_diffusers_pipelines_with_one_call_per_step(pipeline_cls, sde_type):
    model = CountingModel(MEANS, STD, sde_type=sde_type)
    pipe = pipeline_cls(unet=model, scheduler=DDPMScheduler())
    pipe.scheduler = ProbabilityFlowScheduler.from_config(pipe.scheduler.config, sde_type=sde_type, spacing="karras")
    assert pipe.scheduler.order == 2
    pipe.set_progress_bar_config(disable=True)
    CountingModel.calls = 0
    images = pipe(
        batch_size=3000, num_inference_steps=40, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert CountingModel.calls == 2 * 40 - 1
    check_gaussian(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1)


def test_swap_with_a_tiny_unet():
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.scheduler = ProbabilityFlowScheduler.from_config(pipe.scheduler.config, solver="euler", spacing="karras")
    pipe.set_progress_bar_config(disable=True)
    a = pipe(batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    b = pipe(batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert a.shape == (2, 8, 8, 3) and (a >= 0).all() and (a <= 1).all()
    assert (a == b).all()


def test_from_config_maps_ddpm_ddim_and_score_sde_configs(tmp_path):
    vp = ProbabilityFlowScheduler.from_config(DDPMScheduler().config)
    assert (
        isinstance(vp.sde, VPSDE) and vp.sde.beta_min == pytest.approx(0.1) and vp.sde.beta_max == pytest.approx(20.0)
    )
    assert vp.sde.N == 1000 and vp.config.prediction_type == "epsilon"
    v = ProbabilityFlowScheduler.from_config(DDIMScheduler(prediction_type="v_prediction", beta_end=0.012).config)
    assert v.config.prediction_type == "v_prediction" and v.sde.beta_max == pytest.approx(12.0)
    ve = ProbabilityFlowScheduler.from_config(VESDEScheduler(sigma_max=80.0).config)
    assert isinstance(ve.sde, VESDE) and ve.sde.sigma_max == 80.0 and ve.config.prediction_type == "score"
    ScoreSdeVeScheduler().save_pretrained(tmp_path / "ve")
    saved = ProbabilityFlowScheduler.from_config(ScoreSdeVeScheduler.load_config(tmp_path / "ve"))
    assert isinstance(saved.sde, VESDE) and saved.sde.sigma_max == 1348.0 and saved.sde.N == 2000
    SubVPSDEScheduler().save_pretrained(tmp_path / "subvp")
    sub = ProbabilityFlowScheduler.from_config(SubVPSDEScheduler.load_config(tmp_path / "subvp"))
    assert isinstance(sub.sde, SubVPSDE)
    sdevp = ProbabilityFlowScheduler.from_config(
        {"_class_name": "ScoreSdeVpScheduler", "beta_min": 0.1, "beta_max": 20.0, "num_train_timesteps": 2000}
    )
    assert sdevp.sde.N == 2000 and sdevp.sde.beta_max == pytest.approx(20.0)
    # and back: a DDPM-family scheduler built from ours keeps the betas
    ddim = DDIMScheduler.from_config(vp.config)
    assert ddim.config.beta_start == 1e-4 and ddim.config.beta_end == 0.02


def test_timesteps_are_in_model_scale_and_repeat_for_heun():
    heun = ProbabilityFlowScheduler()
    heun.set_timesteps(4)
    grid = torch.linspace(1.0, 1e-3, 4)
    expected = torch.cat([grid[:1], grid[1:].repeat_interleave(2)]) * 999
    torch.testing.assert_close(heun.timesteps, expected)
    euler = ProbabilityFlowScheduler(sde_type="ve", solver="euler", spacing="karras")
    euler.set_timesteps(5)
    assert euler.timesteps.dtype == torch.float32 and len(euler.timesteps) == 5
    assert euler.timesteps[0] == pytest.approx(50.0) and euler.timesteps[-1] == pytest.approx(
        float(euler.sde.sigma(torch.tensor(1e-3)))
    )
    root = euler.timesteps.double() ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff()[:1].expand(4), rtol=1e-4, atol=1e-6)
    assert euler.init_noise_sigma == 50.0 and heun.init_noise_sigma == 1.0 and euler.order == 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "score"])
def test_prediction_types_give_the_same_step(prediction_type):
    """The exact Gaussian score written in each prediction type by closed forms (x0 = Tweedie's, v = m eps - s x0,
    not our inverse maps) gives the same Heun step."""
    sde = VPSDE()
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, var = torch.tensor(MEANS, dtype=torch.float64), STD**2

    def output(ptype, t):
        m, s = (c.reshape(-1, 1, 1, 1) for c in sde.marginal_coeffs(t))
        score = -(x - m * mean) / (m**2 * var + s**2)
        eps = -s * score
        x0 = mean + m * var / (m**2 * var + s**2) * (x - m * mean)  # E[x0 | x_t] of a Gaussian
        return {"score": score, "epsilon": eps, "sample": x0, "v_prediction": m * eps - s * x0}[ptype]

    steps = {}
    for ptype in ("epsilon", prediction_type):
        scheduler = ProbabilityFlowScheduler(prediction_type=ptype, solver="heun")
        scheduler.set_timesteps(5)
        t1 = torch.full((4,), float(scheduler.timesteps[0]) / 999, dtype=torch.float64)
        scheduler.step(output(ptype, t1), scheduler.timesteps[0], x)
        t2 = torch.full((4,), float(scheduler.timesteps[1]) / 999, dtype=torch.float64)
        steps[ptype] = scheduler.step(output(ptype, t2), scheduler.timesteps[1], x).prev_sample
    torch.testing.assert_close(steps["epsilon"], steps[prediction_type], rtol=1e-6, atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    scheduler = ProbabilityFlowScheduler(
        sde_type="subvp", solver="euler", spacing="karras", rho=5.0, sampling_eps=1e-4
    )
    scheduler.save_pretrained(tmp_path)
    loaded = ProbabilityFlowScheduler.from_pretrained(tmp_path)
    strip = lambda c: {k: v for k, v in c.items() if k != "_use_default_values"}  # noqa: E731
    assert strip(loaded.config) == strip(scheduler.config) and isinstance(loaded.sde, SubVPSDE)


def test_add_noise_uses_the_marginal():
    scheduler = ProbabilityFlowScheduler()
    x0 = torch.ones(3, 1, 2, 2, dtype=torch.float64)
    noise = torch.full_like(x0, 2.0)
    out = scheduler.add_noise(x0, noise, torch.tensor([0.0, 499.5, 999.0]))
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    integral = 0.1 * t + 0.5 * 19.9 * t**2  # the VP marginal, written out
    torch.testing.assert_close(out[:, 0, 0, 0], torch.exp(-0.5 * integral) + 2 * (1 - torch.exp(-integral)).sqrt())


def test_pred_original_sample_is_tweedie():
    scheduler = ProbabilityFlowScheduler(solver="euler")
    scheduler.set_timesteps(3)
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    eps = torch.randn_like(x)
    t = scheduler.timesteps[0]
    out = scheduler.step(eps, t, x)
    m, s = scheduler.sde.marginal_coeffs(torch.full((2,), 1.0))
    torch.testing.assert_close(out.pred_original_sample, (x - s[:, None, None, None] * eps) / m[:, None, None, None])
    torch.testing.assert_close(out.prev_sample_mean, out.prev_sample)


def test_bad_input():
    with pytest.raises(ValueError, match="sde_type"):
        ProbabilityFlowScheduler(sde_type="edm")
    with pytest.raises(ValueError, match="solver"):
        ProbabilityFlowScheduler(solver="rk4")
    with pytest.raises(ValueError, match="spacing"):
        ProbabilityFlowScheduler(spacing="leading")
    with pytest.raises(ValueError, match="prediction_type"):
        ProbabilityFlowScheduler(prediction_type="noise")
    with pytest.raises(ValueError, match="beta_schedule"):
        ProbabilityFlowScheduler(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="rho"):
        ProbabilityFlowScheduler(rho=0)
    with pytest.raises(ValueError, match="sampling_eps"):
        ProbabilityFlowScheduler(sampling_eps=1.5)
    scheduler = ProbabilityFlowScheduler()
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    scheduler.set_timesteps(3)
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(torch.zeros(2, 1, 2, 3), scheduler.timesteps[0], x)
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        scheduler.step(x, 123.0, x)
    scheduler.step(x, scheduler.timesteps[0], x)
    with pytest.raises(ValueError, match="expected timestep"):
        scheduler.step(x, scheduler.timesteps[0], x)
