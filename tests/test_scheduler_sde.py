"""The one scheduler -> SDE mapping, against Diffusers' own schedulers (not against our inverse functions)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, ScoreSdeVeScheduler
from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

from sde_diffusers import (
    VESDE,
    VPSDE,
    ExactScoreModel,
    ProbabilityFlowScheduler,
    SchedulerSDE,
    SubVPSDE,
    SubVPSDEScheduler,
    VESDEScheduler,
    VPSDEScheduler,
)
from sde_diffusers.likelihood import resolve_score_fn, sde_from_scheduler_config
from sde_diffusers.parameterization import TIME_INPUTS, continuous_time, make_score_fn, model_time
from sde_diffusers.scheduler_sde import scheduler_family

DDPM_CONFIG = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}


def ddpm(**kwargs):
    return DDPMScheduler(**{**DDPM_CONFIG, "clip_sample": False, **kwargs})


def test_families_from_classes_and_in_memory_configs():
    assert scheduler_family(DDPMScheduler()) == "ddpm"
    assert scheduler_family(DDPMScheduler().config) == "ddpm"  # no _class_name in memory: read from the keys
    assert scheduler_family(DPMSolverMultistepScheduler().config) == "ddpm"
    assert scheduler_family(ScoreSdeVeScheduler().config) == "score_sde_ve"
    assert scheduler_family(ScoreSdeVpScheduler().config) == "score_sde_vp"
    assert scheduler_family(VESDEScheduler().config) == "ours"
    assert scheduler_family(VPSDEScheduler()) == "ours"
    assert scheduler_family({"_class_name": "DDIMScheduler"}) == "ddpm"


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_ddpm_family_marginals_are_diffusers_alphas_cumprod(cls):
    """Timestep k <-> t = k / (N - 1) and the discrete chain's marginal at k, exactly Diffusers'."""
    scheduler = cls(num_train_timesteps=1000, beta_start=2e-4, beta_end=0.03)
    view = SchedulerSDE(scheduler)
    assert isinstance(view.sde, VPSDE) and view.sde.N == 1000
    assert view.sde.beta_min == pytest.approx(0.2) and view.sde.beta_max == pytest.approx(30.0)
    assert view.time_input == "discrete_index" and view.prediction_type == "epsilon"
    assert view.data_range == (-1.0, 1.0) and view.prior_std == 1.0
    k = torch.arange(1000)
    like = torch.zeros(1000, dtype=torch.float32)
    t = view.continuous(k, 1000, like)  # float32, as a pipeline makes it
    torch.testing.assert_close(t.double(), k.double() / 999, rtol=0, atol=1e-7)
    t64 = view.continuous(k, 1000, like.double())
    torch.testing.assert_close(view.model_timestep(t64), k.double(), rtol=0, atol=1e-9)
    m, s = view.marginal_coeffs(t)
    alpha_bar = scheduler.alphas_cumprod.double()
    torch.testing.assert_close(m.double(), alpha_bar.sqrt(), rtol=1e-6, atol=0)
    # Diffusers forms 1 - alpha_bar in float32: its own error there is ~1e-4 relative at k = 0
    torch.testing.assert_close(s.double(), (1 - alpha_bar).sqrt(), rtol=3e-4, atol=0)
    # what this replaces, the continuous VP marginal at t = (k + 1) / N, is up to 8% off Diffusers' chain
    m_cont, _ = view.sde.marginal_coeffs((k + 1).double() / 1000)
    assert ((m_cont / alpha_bar.sqrt() - 1).abs().max()) > 0.05


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_to_score_and_x0_match_ddpm_step(prediction_type):
    """Tweedie's x0 from our score equals DDPMScheduler.step's pred_original_sample, for every prediction type."""
    scheduler = ddpm(prediction_type=prediction_type)
    scheduler.set_timesteps(1000)
    view = SchedulerSDE(scheduler)
    gen = torch.Generator().manual_seed(0)
    for k in (0, 5, 300, 999):
        x = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
        out = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
        expected = scheduler.step(out, k, x).pred_original_sample
        t = view.continuous(k, 3, x)
        x0 = view.to_x0(view.to_score(out, x, t), x, t)
        torch.testing.assert_close(x0, expected, rtol=2e-4, atol=2e-4)


def test_add_noise_get_velocity_and_from_score_match_diffusers():
    scheduler = ddpm()
    view = SchedulerSDE(scheduler)
    ours = VPSDEScheduler.from_config(scheduler.config)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 1, 4, 4, generator=gen)
    noise = torch.randn(5, 1, 4, 4, generator=gen)
    k = torch.tensor([0, 1, 17, 500, 999])
    noisy = scheduler.add_noise(x0, noise, k)
    # (Diffusers' float32 1 - alpha_bar is good to ~1e-4 relative at small k; one index off is 20% there)
    torch.testing.assert_close(ours.add_noise(x0, noise, k), noisy, rtol=1e-4, atol=3e-6)
    velocity = scheduler.get_velocity(x0, noise, k)
    torch.testing.assert_close(ours.get_velocity(x0, noise, k), velocity, rtol=1e-5, atol=3e-6)
    # the score of the noisy sample given x0 is -noise / s; in v-prediction it is Diffusers' velocity
    t = view.continuous(k, 5, x0).double()
    _, s = view.marginal_coeffs(t)
    score = -noise.double() / s[:, None, None, None]
    v_view = SchedulerSDE(ddpm(prediction_type="v_prediction"))
    torch.testing.assert_close(v_view.from_score(score, noisy.double(), t).float(), velocity, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(view.from_score(score, noisy.double(), t).float(), noise, rtol=1e-4, atol=1e-4)


def test_score_sde_ve_conventions():
    scheduler = ScoreSdeVeScheduler()
    view = SchedulerSDE(scheduler)
    assert view.family == "score_sde_ve"
    assert isinstance(view.sde, VESDE)
    assert (view.sde.sigma_min, view.sde.sigma_max, view.sde.N) == (0.01, 1348.0, 2000)
    assert view.data_range == (0.0, 1.0) and view.prior_std == 1348.0 == scheduler.init_noise_sigma
    assert view.prediction_type == "score" and view.time_input == "sigma"
    scheduler.set_timesteps(10)
    scheduler.set_sigmas(10)
    like = torch.zeros(1, dtype=torch.float64)
    for i, step_t in enumerate(scheduler.timesteps):
        t = view.continuous(step_t, 1, like)  # its timesteps are t itself
        torch.testing.assert_close(t, step_t.double().reshape(1), rtol=1e-7, atol=0)
        torch.testing.assert_close(view.model_timestep(t).float(), scheduler.sigmas[i].reshape(1), rtol=1e-5, atol=0)


def test_our_schedulers_keep_score_sde_ve_values():
    """`from_config` of a default ScoreSdeVeScheduler config: sigma_max = 1348 survives `_use_default_values`."""
    config = ScoreSdeVeScheduler().config
    for cls in (VESDEScheduler, ProbabilityFlowScheduler):
        ours = cls.from_config(config)
        assert isinstance(ours.sde, VESDE)
        assert (ours.sde.sigma_min, ours.sde.sigma_max, ours.sde.N) == (0.01, 1348.0, 2000)
        assert tuple(ours.config.data_range) == (0.0, 1.0) and ours.config.prediction_type == "score"
        assert SchedulerSDE(ours).data_range == (0.0, 1.0)
    ve = VESDEScheduler.from_config({**config, "correct_steps": 3, "snr": 0.2})
    assert ve.config.n_corrector_steps == 3 and ve.config.correct_steps == 3 and ve.config.snr == 0.2
    reference = ScoreSdeVeScheduler()
    reference.set_sigmas(2000)
    torch.testing.assert_close(ve.sde.discrete_sigmas(dtype=torch.float32), reference.discrete_sigmas)
    # round trip through our own saved config keeps everything
    again = VESDEScheduler.from_config(ve.config)
    assert again.sde.sigma_max == 1348.0 and tuple(again.config.data_range) == (0.0, 1.0)


def test_our_schedulers_from_ddpm_family_configs():
    config = ddpm(beta_end=0.03).config
    vp = VPSDEScheduler.from_config(config)
    assert vp.config.time_input == "discrete_index" and vp.sde.beta_max == pytest.approx(30.0)
    flow = ProbabilityFlowScheduler.from_config(config)
    assert flow.config.time_input == "discrete_index" and isinstance(flow.sde, VPSDE)
    subvp = SubVPSDEScheduler.from_config(config)
    assert subvp.config.time_input == "auto" and isinstance(subvp.sde, SubVPSDE)  # sub-VP models are continuous
    assert SchedulerSDE(subvp).time_input == "index"
    own = VPSDEScheduler()
    assert own.config.time_input == "auto" and SchedulerSDE(own).time_input == "index"
    assert VPSDEScheduler.from_config(own.config).config.time_input == "auto"


def test_score_sde_vp_config():
    view = SchedulerSDE(ScoreSdeVpScheduler(num_train_timesteps=1000, beta_min=0.2, beta_max=15.0))
    assert isinstance(view.sde, VPSDE) and view.sde.config == {"beta_min": 0.2, "beta_max": 15.0, "N": 1000}
    assert view.time_input == "index" and view.prediction_type == "epsilon"
    like = torch.zeros(1)
    assert float(view.continuous(0.25, 1, like)) == 0.25  # its timesteps are t
    vp = VPSDEScheduler.from_config(ScoreSdeVpScheduler().config)
    assert vp.sde.config == {"beta_min": pytest.approx(0.1), "beta_max": pytest.approx(20.0), "N": 2000}
    assert sde_from_scheduler_config(ScoreSdeVpScheduler().config).config == {
        "beta_min": 0.1,
        "beta_max": 20.0,
        "N": 2000,
    }


def test_a_model_declaring_its_time_input_wins():
    model = ExactScoreModel([[[[0.0]]]], 0.5, sde_type="vp", time_input="discrete_index")
    view = SchedulerSDE(VPSDEScheduler(), model)
    assert view.time_input == "discrete_index"
    assert SchedulerSDE(VPSDEScheduler()).time_input == "index"


def test_unavailable_sde_and_bad_input():
    view = SchedulerSDE(DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    assert not view.available
    with pytest.raises(ValueError, match="linear"):
        view.sde  # noqa: B018
    with pytest.raises(ValueError, match="trained_betas"):
        SchedulerSDE(DDPMScheduler(trained_betas=[1e-4] * 10, num_train_timesteps=10)).sde  # noqa: B018
    with pytest.raises(TypeError, match="scheduler or its config"):
        SchedulerSDE(42)
    with pytest.raises(ValueError, match="data_range"):
        VPSDEScheduler(data_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="time_input"):
        VPSDEScheduler(time_input="sigma")
    with pytest.raises(ValueError, match="discrete_index"):
        SubVPSDEScheduler(time_input="discrete_index")


# ---- the time inputs of official checkpoints ----------------------------------------------------------------
def test_time_inputs_closed_forms():
    assert set(TIME_INPUTS) >= {"sigma", "index", "t", "discrete_index", "reversed_index"}
    vp, ve = VPSDE(N=1000), VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    t = torch.tensor([1e-5, 0.3, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(model_time(vp, t, "discrete_index"), t * 999)  # unrounded, as the official code
    torch.testing.assert_close(model_time(vp, t, "index"), t * 999)
    torch.testing.assert_close(model_time(ve, t, "sigma"), 0.01 * 5000.0**t)
    # discrete VE: index 0 is sigma_max, round((T - t)(N - 1)), as the official get_score_fn
    torch.testing.assert_close(model_time(ve, t, "reversed_index"), torch.round((1 - t) * 999))
    torch.testing.assert_close(
        continuous_time(ve, torch.tensor([0.0, 999.0]), "reversed_index"), torch.tensor([1.0, 0.0])
    )
    with pytest.raises(ValueError, match="needs a VESDE"):
        model_time(vp, t, "reversed_index")
    with pytest.raises(ValueError, match="needs a VPSDE"):
        model_time(ve, t, "discrete_index")
    with pytest.raises(ValueError, match="`time_input` must be one of"):
        model_time(vp, t, "seconds")


def test_discrete_index_score_is_the_official_discrete_vp_score():
    """score = -eps / sqrt(1 - alpha_bar[floor(t (N - 1))]), alpha_bar of linspace(beta_min / N, beta_max / N, N)."""
    sde = VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    seen = []

    def eps_model(x, timestep):
        seen.append(timestep)
        return torch.ones_like(x)

    score_fn = make_score_fn(eps_model, sde, "epsilon", "discrete_index")
    t = torch.tensor([0.0004, 0.25, 0.7777, 1.0], dtype=torch.float64)
    x = torch.zeros(4, 3, dtype=torch.float64)
    score = score_fn(x, t)
    betas = torch.linspace(0.1 / 1000, 20.0 / 1000, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    idx = torch.floor(t * 999).long()
    torch.testing.assert_close(score, -1.0 / (1 - alpha_bar[idx]).sqrt()[:, None].expand(4, 3))
    torch.testing.assert_close(seen[0], t * 999)


def test_reversed_index_score_is_the_model_output():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
    seen = []

    def score_model(x, timestep):
        seen.append(timestep)
        return 2 * x

    t = torch.tensor([1.0, 0.51, 0.0], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(make_score_fn(score_model, sde, "score", "reversed_index")(x, t), 2 * x)
    torch.testing.assert_close(seen[0], torch.tensor([0.0, 4.0, 9.0], dtype=torch.float64))
    # an epsilon output is read against that level's sigma
    _, std = sde.discrete_marginal_coeffs(t)
    torch.testing.assert_close(std, 0.01 * 5000.0 ** torch.tensor([1.0, 5 / 9, 0.0], dtype=torch.float64))


class _Undeclared(torch.nn.Module):
    """A network that declares nothing about itself, as a plain ``UNet2DModel``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, timestep):
        return self.inner(x, timestep)


def test_likelihood_reads_the_time_input_of_a_ddpm_config():
    oracle = ExactScoreModel([[[[0.0]]]], 0.5, sde_type="vp", time_input="discrete_index")
    score_fn, sde = resolve_score_fn(_Undeclared(oracle), scheduler_config=ddpm().config)
    x = torch.randn(4, 1, 1, 1, dtype=torch.float64)
    t = torch.full((4,), 0.01, dtype=torch.float64)
    expected = oracle.mixture.score(x, t, sde, "discrete_index")
    torch.testing.assert_close(score_fn(x, t), expected)
    assert not torch.allclose(expected, oracle.mixture.score(x, t, sde))  # the continuous marginal differs
    assert math.isclose(sde.beta_max, 20.0)
