"""The step contract (t -> t_next, StepOutput with noise_std), the reference DDPM chain at the model's own grid, and
our VE scheduler inside Diffusers' ScoreSdeVePipeline."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, ScoreSdeVePipeline, ScoreSdeVeScheduler

from sde_diffusers import (
    VESDE,
    VPSDE,
    ExactScoreModel,
    ProbabilityFlowScheduler,
    SubVPSDE,
    SubVPSDEScheduler,
    VESDEScheduler,
    VPSDEScheduler,
)
from sde_diffusers.sampling import (
    CORRECTORS,
    PREDICTORS,
    StepOutput,
    ancestral_sampling_step,
    probability_flow_euler_step,
    probability_flow_heun_step,
    reverse_diffusion_step,
    sample_probability_flow_fixed,
)
from sde_diffusers.schedulers import SDESchedulerBase, SDESchedulerMixin
from sde_diffusers.toy import GaussianMixture

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}


# ---- issue 11: the reference DDPM chain at the model's own grid ---------------------------------------------
def test_vp_scheduler_from_ddpm_config_is_ddpm_ancestral_sampling():
    """1000 ancestral steps of VPSDEScheduler.from_config(DDPM config) use DDPM's betas and timesteps exactly: step
    for step the same samples as DDPMScheduler with its fixed_large variance (the same update in Ho et al.)."""
    ddpm = DDPMScheduler(variance_type="fixed_large", clip_sample=False)
    ours = VPSDEScheduler.from_config(ddpm.config, predictor="ancestral", corrector="none")
    # Diffusers forms 1 - alpha_bar in float32 (~1e-4 relative error near timestep 0): run it in float64 here
    ddpm.betas = ddpm.betas.double()
    ddpm.alphas = 1.0 - ddpm.betas
    ddpm.alphas_cumprod = torch.cumprod(ddpm.alphas, 0)
    ddpm.set_timesteps(1000)
    ours.set_timesteps(1000)
    torch.testing.assert_close(ours.timesteps, ddpm.timesteps.float(), rtol=0, atol=1e-4)
    t = ours.continuous_timesteps(ours.timesteps).float()
    torch.testing.assert_close(ours.sde.discrete_beta(t).double(), ddpm.betas.flip(0), rtol=2e-6, atol=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    g_ddpm, g_ours = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    worst = 0.0
    for k, (a, b) in enumerate(zip(ddpm.timesteps, ours.timesteps, strict=True)):
        eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x_ddpm = ddpm.step(eps, a, x, generator=g_ddpm).prev_sample
        out = ours.step(eps, b, x, generator=g_ours)
        if k < 999:  # DDPM adds no noise at timestep 0; ours returns the noise-free mean there
            assert out.noise_std.shape == (3,)
            torch.testing.assert_close(out.noise_std, ddpm.betas[999 - k].sqrt().expand(3), rtol=1e-6, atol=0)
        worst = max(worst, float((out.prev_sample - x_ddpm).abs().max() / x_ddpm.abs().max()))
        x = x_ddpm  # every step from the same state: a per-step comparison, free of float32 accumulation
    assert worst < 1e-6


def test_reverse_diffusion_default_grid_is_the_reference_chain():
    """x_mean = (2 - sqrt(1 - beta_i)) x + beta_i score with beta_i = beta(i / (N - 1)) / N at floor(t (N - 1))."""
    sde = VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    t = torch.tensor([1.0, 0.731, 0.02, 0.0005], dtype=torch.float64)
    x, score, z = (torch.randn(4, 3, dtype=torch.float64) for _ in range(3))
    i = torch.floor(t * 999)
    beta = (0.1 + i / 999 * 19.9)[:, None] / 1000
    for n in (None, 1000):
        out = reverse_diffusion_step(sde, score, x, t, num_steps=n, noise=z)
        torch.testing.assert_close(
            out.prev_sample_mean, (2 - (1 - beta).sqrt()) * x + beta * score, rtol=1e-12, atol=0
        )
        torch.testing.assert_close(out.prev_sample, out.prev_sample_mean + beta.sqrt() * z, rtol=1e-12, atol=0)
    # where the first-order chain breaks (beta_max / n >= 1) the exact 1 - exp(-int beta) is used
    coarse = reverse_diffusion_step(sde, score, x, t, num_steps=10, noise=z)
    assert torch.isfinite(coarse.prev_sample).all()
    a, v = sde.transition_coeffs(t, (t - 0.1).clamp_min(0))
    torch.testing.assert_close(coarse.noise_std, v.sqrt())


# ---- the contract ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*PREDICTORS, *CORRECTORS])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_every_step_reports_its_noise_std(sde_name, name):
    sde = SDES[sde_name]
    step = PREDICTORS.get(name) or CORRECTORS[name]
    extra = {"snr": 0.16} if name in CORRECTORS else {}
    gen = torch.Generator().manual_seed(0)
    x, score, z = (torch.randn(5, 2, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0.9, 0.5, 0.3, 0.1, 0.05], dtype=torch.float64)
    for kwargs in ({"num_steps": 50}, {"t_next": t - 0.02}):
        out = step(sde, score, x, t, noise=z, **kwargs, **extra)
        assert isinstance(out, StepOutput) and out.noise_std.shape == (5,)
        prev, mean = out  # unpacks as (prev_sample, prev_sample_mean), as before
        torch.testing.assert_close(prev - mean, out.noise_std[:, None, None] * z, rtol=1e-12, atol=1e-15)
        assert (out.noise_std > 0).all()
    # a score tensor and a score function called once give the same step
    calls = []
    by_fn = step(sde, lambda a, b: calls.append(1) or score, x, t, t - 0.02, noise=z, **extra)
    torch.testing.assert_close(by_fn.prev_sample, step(sde, score, x, t, t - 0.02, noise=z, **extra).prev_sample)
    assert len(calls) == 1


def test_exact_steps_use_the_transition_kernel():
    """To t_next: VE reverse diffusion adds sigma(t)^2 - sigma(t_next)^2 of variance; ancestral's mean is
    (x + v score) / a and its variance s_next^2 v / s^2 (closed forms of the VP kernel written out here)."""
    t, t_next = torch.tensor([0.8, 0.4]), torch.tensor([0.6, 0.1])
    x, score = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    t, t_next = t.double(), t_next.double()
    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    out = reverse_diffusion_step(ve, score, x, t, t_next)
    var = (0.01 * 5000.0**t) ** 2 - (0.01 * 5000.0**t_next) ** 2
    torch.testing.assert_close(out.noise_std, var.sqrt())
    torch.testing.assert_close(out.prev_sample_mean, x + var[:, None] * score)
    vp = VPSDE()
    integral = lambda s: 0.1 * s + 0.5 * 19.9 * s**2  # noqa: E731
    a = torch.exp(-0.5 * (integral(t) - integral(t_next)))
    v = 1 - a**2
    s2, s2_next = 1 - torch.exp(-integral(t)), 1 - torch.exp(-integral(t_next))
    anc = ancestral_sampling_step(vp, score, x, t, t_next)
    torch.testing.assert_close(anc.prev_sample_mean, (x + v[:, None] * score) / a[:, None])
    torch.testing.assert_close(anc.noise_std, (s2_next * v / s2).sqrt())


def test_step_argument_errors():
    sde, x, t = VPSDE(), torch.randn(3, 2), torch.full((3,), 0.5)
    with pytest.raises(ValueError, match="not both"):
        reverse_diffusion_step(sde, torch.zeros(3, 2), x, t, t - 0.1, num_steps=10)
    with pytest.raises(ValueError, match="t_next must be a tensor of shape"):
        reverse_diffusion_step(sde, torch.zeros(3, 2), x, t, torch.zeros(2))
    with pytest.raises(ValueError, match="score has shape"):
        reverse_diffusion_step(sde, torch.zeros(3, 3), x, t, t - 0.1)


def test_probability_flow_contract_steps_match_the_fixed_sampler():
    sde = VPSDE()
    data = GaussianMixture.gaussian(torch.tensor([0.5, -0.2]), 0.3)
    score_fn = data.score_fn(sde)
    x = torch.randn(4, 2, dtype=torch.float64)
    ref = sample_probability_flow_fixed(score_fn, sde, x, num_steps=2, solver="heun", denoise=False).sample
    t, t_next = torch.full((4,), 1.0, dtype=torch.float64), torch.full((4,), 1e-3, dtype=torch.float64)
    euler = probability_flow_euler_step(sde, score_fn(x, t), x, t, t_next)
    heun = probability_flow_heun_step(sde, score_fn(x, t), x, t, t_next, score_fn(euler.prev_sample, t_next))
    torch.testing.assert_close(heun.prev_sample, ref)
    assert (heun.noise_std == 0).all() and (euler.prev_sample == euler.prev_sample_mean).all()


def test_probability_flow_scheduler_has_no_pc_methods():
    assert issubclass(ProbabilityFlowScheduler, SDESchedulerBase)
    assert not issubclass(ProbabilityFlowScheduler, SDESchedulerMixin)
    assert not hasattr(ProbabilityFlowScheduler, "_sub_steps")


# ---- PC on a Karras grid against the exact Gaussian ---------------------------------------------------------
MEANS = [[[[0.3, -0.2], [0.0, 0.5]]]]
STD = 0.15


def _hand_loop(scheduler, model, n_steps, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(n_steps)
    x = torch.randn(batch, 1, 2, 2, generator=gen, dtype=torch.float64) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(x, t).sample
        x = scheduler.step(out, t, x, generator=gen).prev_sample
    return x.reshape(batch, -1)


@pytest.mark.parametrize(
    "scheduler,sde_type",
    [
        (VESDEScheduler(spacing="karras", sigma_max=20.0), "ve"),
        (VPSDEScheduler(spacing="karras", predictor="reverse_diffusion", corrector="langevin", snr=0.16), "vp"),
        (SubVPSDEScheduler(spacing="karras", predictor="reverse_diffusion", corrector="langevin", snr=0.16), "subvp"),
    ],
    ids=["ve-pc", "vp-pc", "subvp-pc"],
)
def test_pc_runs_on_a_karras_grid(scheduler, sde_type):
    kwargs = {"sigma_max": 20.0} if sde_type == "ve" else {}
    prediction = "score" if sde_type == "ve" else "epsilon"
    model = ExactScoreModel(MEANS, STD, sde_type=sde_type, sde_kwargs=kwargs, prediction_type=prediction).double()
    x = _hand_loop(scheduler, model, 60, 2000)
    mean = torch.tensor(MEANS, dtype=torch.float64).reshape(-1)
    assert ((x.mean(0) - mean).abs() < 5 * STD / math.sqrt(len(x))).all(), x.mean(0)
    assert ((x.std(0) / STD - 1).abs() < 0.08).all(), x.std(0)


# ---- Diffusers' ScoreSdeVePipeline with our scheduler -------------------------------------------------------
def _ve_unit_range_model(sigma_max: float) -> ExactScoreModel:
    """A VE oracle in Diffusers' score-SDE convention: data in [0, 1], the UNet takes sigma and returns the score."""
    means = (torch.full((1, 3, 4, 4), 0.5) + 0.2 * torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4)).tolist()
    kwargs = {"sigma_min": 0.01, "sigma_max": sigma_max, "N": 1000}
    return ExactScoreModel(means, 0.05, sde_type="ve", sde_kwargs=kwargs, prediction_type="score")


def test_ve_scheduler_runs_diffusers_score_sde_ve_pipeline():
    model = _ve_unit_range_model(5.0)
    reference = ScoreSdeVeScheduler(num_train_timesteps=1000, sigma_max=5.0, snr=0.15)
    scheduler = VESDEScheduler.from_config(reference.config)
    assert scheduler.config.correct_steps == 1 and tuple(scheduler.config.data_range) == (0.0, 1.0)
    images = {}
    for name, sched in (("ours", scheduler), ("diffusers", reference)):
        pipe = ScoreSdeVePipeline(unet=model, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            batch_size=600, num_inference_steps=150, generator=torch.Generator().manual_seed(0), output_type="np"
        )
        images[name] = torch.from_numpy(out.images).permute(0, 3, 1, 2).reshape(600, -1).double()
    mean = torch.tensor(model.config.means, dtype=torch.float64).reshape(-1)
    x = images["ours"]
    assert ((x.mean(0) - mean).abs() < 5 * 0.05 / math.sqrt(600)).all()
    assert ((x.std(0) / 0.05 - 1).abs() < 0.15).all()
    # the same sampler as Diffusers' own scheduler, draw for draw
    torch.testing.assert_close(images["ours"], images["diffusers"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scheduler.sigmas, reference.sigmas, rtol=1e-5, atol=0)


def test_set_sigmas_interface_errors():
    scheduler = VESDEScheduler()
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="set_sigmas"):
        scheduler.step_correct(x, x)
    with pytest.raises(ValueError, match="sigma_max"):
        scheduler.set_sigmas(10, sigma_max=3.0)
    scheduler.set_sigmas(3)
    assert len(scheduler.timesteps) == 3 and len(scheduler.sigmas) == 3
    with pytest.raises(ValueError, match="expected timestep"):
        scheduler.step_pred(x, scheduler.timesteps[1], x)
