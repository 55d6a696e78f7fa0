"""The predictor-corrector schedulers inside Diffusers loops."""

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

from sde_diffusers import ExactScoreModel, SubVPSDEScheduler, VESDEScheduler, VPSDEScheduler
from sde_diffusers.sampling import langevin_step, reverse_diffusion_step

MEANS = [[[[0.3, -0.2], [0.0, 0.5]]]]  # one 1x2x2 Gaussian, well inside [-1, 1] so DDPMPipeline's clamp is inert
STD = 0.15


def check_gaussian(x: torch.Tensor, n_sigma: float = 6.0, rel_std: float = 0.06) -> None:
    x = x.reshape(x.shape[0], -1).double()
    mean = torch.tensor(MEANS, dtype=torch.float64).reshape(-1)
    assert ((x.mean(0) - mean).abs() < n_sigma * STD / math.sqrt(len(x))).all(), x.mean(0)
    assert ((x.std(0) / STD - 1).abs() < rel_std).all(), x.std(0)


def hand_loop(scheduler, model, n_steps, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(n_steps)
    x = torch.randn(batch, 1, 2, 2, generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(out, t, x, generator=gen).prev_sample
    return x


@pytest.mark.parametrize(
    "cls,sde_type,kwargs",
    [
        (VESDEScheduler, "ve", {}),
        (VESDEScheduler, "ve", {"predictor": "ancestral", "corrector": "annealed_langevin"}),
        (VPSDEScheduler, "vp", {}),
        (VPSDEScheduler, "vp", {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}),
        (SubVPSDEScheduler, "subvp", {"predictor": "ancestral"}),
        (SubVPSDEScheduler, "subvp", {"corrector": "langevin", "n_corrector_steps": 2, "snr": 0.16}),
    ],
)
def test_hand_written_loop_samples_the_data(cls, sde_type, kwargs):
    scheduler = cls(**kwargs)
    prediction = "score" if sde_type == "ve" else "epsilon"
    model = ExactScoreModel(MEANS, STD, sde_type=sde_type, prediction_type=prediction)
    check_gaussian(hand_loop(scheduler, model, 500, 3000))


def test_scheduler_equals_the_step_functions():
    """A PC loop through the scheduler is exactly the reference PC loop over the step functions."""
    scheduler = VESDEScheduler(n_corrector_steps=1)
    model = ExactScoreModel(MEANS, STD, sde_type="ve", prediction_type="score")
    out = hand_loop(scheduler, model, 20, 8, seed=5)
    sde = scheduler.sde
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 1, 2, 2, generator=gen) * sde.sigma_max
    score_fn = model.mixture.score_fn(sde)
    for t in torch.linspace(1.0, 1e-5, 20, dtype=torch.float64):
        tv = t.float().expand(8)
        x, _ = langevin_step(
            sde,
            lambda a, b: score_fn(a.double(), b.double()).float(),
            x,
            tv,
            snr=0.16,
            num_steps=20,
            generator=gen,
        )
        x, x_mean = reverse_diffusion_step(
            sde, lambda a, b: score_fn(a.double(), b.double()).float(), x, tv, num_steps=20, generator=gen
        )
    torch.testing.assert_close(out, x_mean, rtol=1e-4, atol=1e-4)


def test_timesteps_are_in_model_scale_and_repeat_for_the_corrector():
    vp = VPSDEScheduler(corrector="langevin", n_corrector_steps=2)
    vp.set_timesteps(5)
    grid = torch.linspace(1.0, 1e-3, 5)
    torch.testing.assert_close(vp.timesteps, (grid * 999).repeat_interleave(3))
    ve = VESDEScheduler(corrector="none")
    ve.set_timesteps(4)
    torch.testing.assert_close(ve.timesteps, ve.sde.sigma(torch.linspace(1.0, 1e-5, 4)))
    assert ve.timesteps.dtype == torch.float32
    assert ve.init_noise_sigma == 50.0 and vp.init_noise_sigma == 1.0


@pytest.mark.parametrize("pipeline_cls", [DDPMPipeline, DDIMPipeline])
@pytest.mark.parametrize("cls", [VPSDEScheduler, SubVPSDEScheduler])
def test_swap_into_diffusers_pipelines(pipeline_cls, cls):
    sde_type = "vp" if cls is VPSDEScheduler else "subvp"
    # A DDPM config describes a model trained on the discrete chain (VP); sub-VP models are continuous.
    time_input = "discrete_index" if cls is VPSDEScheduler else "auto"
    model = ExactScoreModel(MEANS, STD, sde_type=sde_type, time_input=time_input)
    pipe = pipeline_cls(unet=model, scheduler=DDPMScheduler())
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=3000, num_inference_steps=200, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
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
    pipe.scheduler = VPSDEScheduler.from_config(pipe.scheduler.config, corrector="langevin")
    pipe.set_progress_bar_config(disable=True)
    a = pipe(batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    b = pipe(batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert a.shape == (2, 8, 8, 3) and (a >= 0).all() and (a <= 1).all()
    assert (a == b).all()


def test_from_config_maps_ddpm_and_score_sde_configs():
    s = VPSDEScheduler.from_config(DDPMScheduler(beta_start=2e-4, beta_end=0.01, num_train_timesteps=500).config)
    assert s.sde.beta_min == pytest.approx(0.1) and s.sde.beta_max == pytest.approx(5.0) and s.sde.N == 500
    s = SubVPSDEScheduler.from_config(DDIMScheduler(beta_end=0.012).config)
    assert type(s.sde).__name__ == "SubVPSDE" and s.sde.beta_max == pytest.approx(12.0)
    s = VPSDEScheduler.from_config(DDPMScheduler(prediction_type="v_prediction").config)
    assert s.config.prediction_type == "v_prediction"
    # a default ScoreSdeVeScheduler lists sigma_max in `_use_default_values`: its 1348 must survive (not our 50)
    s = VESDEScheduler.from_config(ScoreSdeVeScheduler().config)
    assert s.sde.sigma_max == 1348.0 and s.sde.N == 2000
    s = VESDEScheduler.from_config(ScoreSdeVeScheduler(sigma_max=348.0, snr=0.075, correct_steps=2).config)
    assert s.sde.sigma_max == 348.0 and s.config.snr == 0.075 and s.config.n_corrector_steps == 2
    assert "DDPMScheduler" in VPSDEScheduler._compatibles and "DDIMScheduler" in SubVPSDEScheduler._compatibles
    with pytest.raises(ValueError, match="beta_schedule"):
        VPSDEScheduler.from_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)


@pytest.mark.parametrize("cls", [VESDEScheduler, VPSDEScheduler, SubVPSDEScheduler])
def test_save_and_load_round_trip(cls, tmp_path):
    s = cls(predictor="ancestral", corrector="langevin", snr=0.2, n_corrector_steps=3, sampling_eps=2e-3)
    s.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(s.config)
    assert loaded.sde.config == s.sde.config


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_give_the_same_step(prediction_type):
    """One network's output written in each prediction type with Diffusers' formulas (DDPMScheduler's x0 and
    get_velocity, not our inverse maps) gives the same step and the same x0 as DDPMScheduler.step."""
    ddpm = DDPMScheduler(clip_sample=False, prediction_type=prediction_type)
    ddpm.set_timesteps(1000)
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    k = 700
    alpha_bar = ddpm.alphas_cumprod[k].double()
    x0 = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    output = {"epsilon": eps, "sample": x0, "v_prediction": ddpm.get_velocity(x0, eps, torch.tensor([k] * 4))}
    steps = {}
    for ptype in ("epsilon", prediction_type):
        ours = VPSDEScheduler.from_config(DDPMScheduler(prediction_type=ptype).config, predictor="ancestral")
        ours.set_timesteps(1000)
        t = ours.timesteps[999 - k]
        ours._step_index = 999 - k
        steps[ptype] = ours.step(output[ptype], t, x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(steps[prediction_type].prev_sample, steps["epsilon"].prev_sample, rtol=1e-5, atol=1e-6)
    expected = ddpm.step(output[prediction_type], k, x).pred_original_sample
    torch.testing.assert_close(steps[prediction_type].pred_original_sample, expected, rtol=1e-4, atol=1e-5)


def test_add_noise_uses_the_marginal():
    """Continuous VP: exp(-int beta / 2) x0 + sqrt(1 - exp(-int beta)) noise, written out; DDPM configs: exactly
    DDPMScheduler.add_noise; VE: x0 + sigma noise."""
    s = VPSDEScheduler()
    x0, noise = torch.randn(3, 1, 2, 2, dtype=torch.float64), torch.randn(3, 1, 2, 2, dtype=torch.float64)
    timesteps = torch.tensor([10, 500, 999])
    out = s.add_noise(x0, noise, timesteps)
    t = (timesteps / 999).double().reshape(3, 1, 1, 1)
    integral = 0.1 * t + 0.5 * 19.9 * t**2
    torch.testing.assert_close(out, torch.exp(-0.5 * integral) * x0 + (1 - torch.exp(-integral)).sqrt() * noise)
    ddpm = DDPMScheduler()
    discrete = VPSDEScheduler.from_config(ddpm.config)
    expected = ddpm.add_noise(x0.float(), noise.float(), timesteps)
    # DDPMScheduler's alphas_cumprod is a float32 cumprod (relative error ~1e-5 at k = 999); an off-by-one in k
    # moves sqrt(1 - alpha_bar) by ~5% at k = 10
    torch.testing.assert_close(
        discrete.add_noise(x0.float(), noise.float(), timesteps), expected, rtol=1e-4, atol=1e-5
    )
    ve = VESDEScheduler()
    out = ve.add_noise(x0, noise, torch.tensor(2.0))
    torch.testing.assert_close(out, x0 + 2.0 * noise)


def test_generator_list_gives_per_sample_reproducibility():
    model = ExactScoreModel(MEANS, STD, sde_type="vp")
    pipe = DDPMPipeline(unet=model, scheduler=VPSDEScheduler(corrector="langevin", langevin_per_sample=True))
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = pipe(batch_size=3, num_inference_steps=10, output_type="np", generator=gens).images
    one = pipe(
        batch_size=1, num_inference_steps=10, output_type="np", generator=[torch.Generator().manual_seed(2)]
    ).images
    assert abs(batch[2] - one[0]).max() < 1e-6


def test_final_step_is_denoised():
    model = ExactScoreModel(MEANS, STD, sde_type="vp")
    s = VPSDEScheduler()
    s.set_timesteps(3)
    x = torch.randn(2, 1, 2, 2)
    for t in s.timesteps:
        out = s.step(model(x, t).sample, t, x, generator=torch.Generator().manual_seed(0))
        x = out.prev_sample
    torch.testing.assert_close(out.prev_sample, out.prev_sample_mean)
    tup = VPSDEScheduler(denoise_final=False)
    tup.set_timesteps(1)
    prev, mean = tup.step(model(x, tup.timesteps[0]).sample, tup.timesteps[0], x, return_dict=False)
    assert not torch.allclose(prev, mean)


def test_bad_input():
    with pytest.raises(ValueError, match="predictor"):
        VPSDEScheduler(predictor="heun")
    with pytest.raises(ValueError, match="corrector"):
        VESDEScheduler(corrector="hmc")
    with pytest.raises(ValueError, match="both be 'none'"):
        VESDEScheduler(predictor="none", corrector="none")
    with pytest.raises(ValueError, match="prediction_type"):
        VPSDEScheduler(prediction_type="x0")
    with pytest.raises(ValueError, match="sampling_eps"):
        VPSDEScheduler(sampling_eps=1.5)
    with pytest.raises(ValueError, match="sampling_eps"):
        VESDEScheduler(sampling_eps=0.0)
    with pytest.raises(ValueError, match="n_corrector_steps"):
        VESDEScheduler(n_corrector_steps=0)
    s = VPSDEScheduler()
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="model_output has shape"):
        s.step(torch.zeros(2, 1, 2, 3), s.timesteps[0], x)
    with pytest.raises(TypeError, match="floating-point"):
        s.step(x, s.timesteps[0], x.long())
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        s.step(x, 123.4, x)
    s.step(x, s.timesteps[0], x)
    with pytest.raises(ValueError, match="expected timestep"):
        s.step(x, s.timesteps[3], x)
