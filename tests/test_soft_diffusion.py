"""Soft Diffusion: sampling steps, Soft Score Matching loss and SoftDiffusionScheduler on closed-form Gaussian data.

The stand-in data is Gaussian and independent across DCT frequencies: x_0 = idct2(m + sqrt(v) z). The blur is
diagonal in the same basis, so every corrupted distribution and the exact posterior mean E[x_0 | x_t] are
closed form per frequency: with blur multiplier r and noise s, Y = r X + s eta and
E[X | Y] = m + r v / (r^2 v + s^2) (Y - r m).
"""

import math

import pytest
import torch

from sde_diffusers.corruption import CorruptionSchedule, DCTBlur, blur_response, dct2, idct2
from sde_diffusers.losses import soft_score_matching_loss
from sde_diffusers.sampling.soft import (
    SOFT_SAMPLERS,
    soft_deterministic_step,
    soft_momentum_step,
    soft_naive_step,
)
from sde_diffusers.schedulers.scheduling_soft_diffusion import (
    SoftDiffusionScheduler,
    SoftDiffusionSchedulerOutput,
)

F64 = torch.float64


class GaussianImages:
    """Images whose DCT coefficients are independent Gaussians N(mean, var), corrupted by ``schedule``."""

    def __init__(self, schedule: CorruptionSchedule, channels: int = 1, seed: int = 0) -> None:
        h, w = schedule.image_size
        g = torch.Generator().manual_seed(seed)
        ky = torch.arange(h, dtype=F64)[:, None]
        kx = torch.arange(w, dtype=F64)[None, :]
        # A natural-image-like spectrum: most variance in the low frequencies.
        self.var = (0.5 / (1.0 + ky**2 + kx**2)).expand(channels, h, w).clone()
        self.mean = torch.zeros(channels, h, w, dtype=F64)
        self.mean[:, 0, 0] = torch.randn(channels, generator=g, dtype=F64)
        self.mean[:, 1, 0] = -0.5
        self.schedule = schedule
        self.size = (h, w)

    def sample_x0(self, n: int, g: torch.Generator) -> torch.Tensor:
        z = torch.randn((n, *self.mean.shape), generator=g, dtype=F64)
        return idct2(self.mean + self.var.sqrt() * z)

    def sample_xt(self, t: float, n: int, g: torch.Generator) -> torch.Tensor:
        return self.schedule.corrupt(self.sample_x0(n, g), torch.full((n,), t, dtype=F64), generator=g)

    def _levels(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((t == t[0]).all()):
            t = t[:1]  # one level for the whole batch: broadcast instead of a per-sample table
        r = blur_response(self.schedule.blur_sigma(t.to(F64)), self.size).unsqueeze(1)  # (batch, 1, H, W)
        s = self.schedule.noise_std(t.to(F64)).reshape(-1, 1, 1, 1)
        return r, s

    def posterior_mean(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The perfect x_0 predictor E[x_0 | x_t]."""
        r, s = self._levels(t)
        y = dct2(x.to(F64))
        return idct2(self.mean + r * self.var / (r**2 * self.var + s**2) * (y - r * self.mean)).to(x.dtype)

    def marginal(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of every DCT coefficient of x_t."""
        r, s = self._levels(torch.tensor([t], dtype=F64))
        return (r * self.mean)[0], (r**2 * self.var + s**2)[0]


def _run(step, model: GaussianImages, n_steps: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = model.sample_xt(1.0, batch, g)
    times = torch.linspace(1.0, 0.0, n_steps + 1, dtype=F64)
    for i in range(n_steps):
        t, t_next = times[i].expand(batch), times[i + 1].expand(batch)
        x = step(model.schedule, model.posterior_mean(x, t), x, t, t_next, generator=g).prev_sample
    return x


def _distribution_error(x: torch.Tensor, model: GaussianImages) -> tuple[float, float]:
    """Mean |log(empirical var / exact var)| over DCT coefficients, and the mean of the log-ratios."""
    mean, var = model.marginal(0.0)
    coeffs = dct2(x)
    log_ratio = torch.log(coeffs.var(0) / var)
    mean_err = ((coeffs.mean(0) - mean).abs() / var.sqrt()).max().item()
    assert mean_err < 0.15, mean_err  # means are right for every sampler (the posterior mean is unbiased)
    return log_ratio.abs().mean().item(), log_ratio.mean().item()


# ---- step functions: formulas ---------------------------------------------------------------------------------
@pytest.fixture
def schedule():
    return CorruptionSchedule.default(8, num_levels=100)


def test_steps_match_their_formulas(schedule):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 8, generator=g, dtype=F64)
    x0_hat = torch.randn(3, 2, 8, 8, generator=g, dtype=F64)
    eta = torch.randn(3, 2, 8, 8, generator=g, dtype=F64)
    t = torch.tensor([0.9, 0.5, 0.2], dtype=F64)
    t_next = torch.tensor([0.7, 0.5, 0.0], dtype=F64)
    blur = DCTBlur()
    c_now = blur(x0_hat, schedule.blur_sigma(t))
    c_next = blur(x0_hat, schedule.blur_sigma(t_next))
    s = schedule.noise_std(t)[:, None, None, None]
    s_next = schedule.noise_std(t_next)[:, None, None, None]
    momentum = c_next + (s_next**2 / s**2) * (x - c_now) + torch.sqrt(s**2 - s_next**2) * eta
    naive = c_next + s_next * eta
    deterministic = c_next + (s_next / s) * (x - c_now)
    torch.testing.assert_close(
        soft_momentum_step(schedule, x0_hat, x, t, t_next, noise=eta).prev_sample, momentum, atol=1e-13, rtol=0
    )
    torch.testing.assert_close(
        soft_naive_step(schedule, x0_hat, x, t, t_next, noise=eta).prev_sample, naive, atol=1e-13, rtol=0
    )
    torch.testing.assert_close(
        soft_deterministic_step(schedule, x0_hat, x, t, t_next, noise=eta).prev_sample,
        deterministic,
        atol=1e-13,
        rtol=0,
    )
    # the step contract: the noise each step added, per sample (its transition density's std)
    noise_stds = {
        "momentum": torch.sqrt(s**2 - s_next**2).reshape(-1),
        "naive": s_next.reshape(-1),
        "deterministic": torch.zeros(len(t), dtype=F64),
    }
    for name, expected in noise_stds.items():
        out = SOFT_SAMPLERS[name](schedule, x0_hat, x, t, t_next, noise=eta)
        torch.testing.assert_close(out.noise_std, expected, atol=1e-13, rtol=0)
        torch.testing.assert_close(out.prev_sample - out.prev_sample_mean, expected[:, None, None, None] * eta)
    assert set(SOFT_SAMPLERS) == {"momentum", "naive", "deterministic"}


def test_momentum_without_noise_change_is_cold_diffusion_and_deterministic_step_is_exact():
    # Constant noise: the momentum step is Cold Diffusion's improved sampler x + (C' - C) x0_hat.
    sch = CorruptionSchedule([0.5, 3.0, 8.0], [0.05, 0.05, 0.05], image_size=8)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=F64)
    x0_hat = torch.randn(2, 1, 8, 8, generator=g, dtype=F64)
    t, t_next = torch.full((2,), 0.8, dtype=F64), torch.full((2,), 0.3, dtype=F64)
    cold = x + sch.blur(x0_hat, t_next) - sch.blur(x0_hat, t)
    torch.testing.assert_close(
        soft_momentum_step(sch, x0_hat, x, t, t_next, generator=g).prev_sample, cold, atol=1e-13, rtol=0
    )
    # Single-image data (x0_hat exact): the deterministic step maps x_t onto x_t' with the same noise.
    sch = CorruptionSchedule.default(8, num_levels=100)
    x0 = torch.rand(2, 3, 8, 8, generator=g, dtype=F64)
    eta = torch.randn(2, 3, 8, 8, generator=g, dtype=F64)
    x_t = sch.corrupt(x0, t, eta)
    torch.testing.assert_close(
        soft_deterministic_step(sch, x0, x_t, t, t_next).prev_sample, sch.corrupt(x0, t_next, eta), atol=1e-13, rtol=0
    )


def test_steps_reproducible_and_generators_per_sample(schedule):
    x = torch.randn(2, 1, 8, 8)
    t, t_next = torch.full((2,), 0.6), torch.full((2,), 0.4)
    a = soft_momentum_step(schedule, x, x, t, t_next, generator=[torch.Generator().manual_seed(i) for i in (3, 4)])[0]
    b = soft_momentum_step(schedule, x, x, t, t_next, generator=[torch.Generator().manual_seed(i) for i in (3, 9)])[0]
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])
    assert a.dtype == torch.float32


def test_steps_bad_input(schedule):
    x = torch.randn(2, 1, 8, 8)
    t, t_next = torch.full((2,), 0.6), torch.full((2,), 0.4)
    for step in SOFT_SAMPLERS.values():
        with pytest.raises(ValueError, match="t_next must be <= t"):
            step(schedule, x, x, t_next, t)
        with pytest.raises(ValueError, match="x0_hat"):
            step(schedule, x[:, :, :4], x, t, t_next)
        with pytest.raises(ValueError, match="shape"):
            step(schedule, x, x, t[:1], t_next)
        with pytest.raises(TypeError, match="corruption"):
            step(object(), x, x, t, t_next)
        with pytest.raises(TypeError, match="torch.Tensor"):
            step(schedule, x, x, 0.6, t_next)
        with pytest.raises(ValueError, match="smaller than"):
            step(schedule, x[..., :4, :4], x[..., :4, :4], t, t_next)
    with pytest.raises(ValueError, match="noise"):
        soft_momentum_step(schedule, x, x, t, t_next, noise=torch.randn(2, 1, 8, 7))


# ---- step functions: convergence on Gaussian data ---------------------------------------------------------------
def test_momentum_sampler_converges_and_naive_sampler_does_not(one_thread):
    """With the exact x_0 predictor, the momentum (and deterministic) samplers reach the t = 0 distribution
    as steps grow; the naive sampler loses variance at every step and plateaus far from it. A momentum
    step with a swapped or missing coefficient (s'/s for s'^2/s^2, or no fresh noise) fails this test."""
    model = GaussianImages(CorruptionSchedule.default(8, num_levels=1000), channels=1)
    batch = 3000
    err = {}
    for name, step in SOFT_SAMPLERS.items():
        for n in (8, 64) if name != "naive" else (64,):
            err[name, n] = _distribution_error(_run(step, model, n, batch, seed=n), model)
    assert err["momentum", 64][0] < 0.1, err
    assert err["momentum", 64][0] < 0.4 * err["momentum", 8][0], err
    assert err["deterministic", 64][0] < 0.15, err
    assert err["deterministic", 64][0] < 0.4 * err["deterministic", 8][0], err
    # Naive: far off, with too little variance (too smooth); more steps do not fix it (0.7 at 400 steps).
    assert err["naive", 64][0] > 0.5 and err["naive", 64][1] < -0.5, err


# ---- Soft Score Matching -----------------------------------------------------------------------------------------
def test_soft_loss_is_epsilon_mse_and_matches_closed_form_for_the_posterior_mean():
    sch = CorruptionSchedule.default(8, num_levels=200)
    model = GaussianImages(sch, channels=2, seed=3)
    g = torch.Generator().manual_seed(0)
    x0 = model.sample_x0(3000, g)
    t = torch.full((3000,), 0.35, dtype=F64)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)

    def model_fn(x, t_in):
        return model.posterior_mean(x, t_in)

    loss, per_sample = soft_score_matching_loss(model_fn, x0, sch, t=t, noise=noise, return_per_sample=True)
    # "score" weighting = MSE of the implied noise estimate (x_t - C_t h) / s_t against the true noise.
    x_t = sch.corrupt(x0, t, noise)
    s = sch.noise_std(t)[:, None, None, None]
    eps_mse = (((x_t - sch.blur(model_fn(x_t, t), t)) / s - noise) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(per_sample, eps_mse, atol=1e-9, rtol=1e-9)
    # Expected value for the exact posterior mean: mean over coefficients of r^2 v / (r^2 v + s^2).
    r, s = model._levels(t[:1])
    expected = (r**2 * model.var / (r**2 * model.var + s**2)).mean().item()
    assert loss.item() == pytest.approx(expected, rel=0.03)
    # Uniform weighting is s_t^2 times smaller here; half-sum reduction is D / 2 times larger.
    uniform = soft_score_matching_loss(model_fn, x0, sch, t=t, noise=noise, weighting="uniform")
    assert uniform.item() == pytest.approx(loss.item() * sch.noise_std(t[:1]).item() ** 2, rel=1e-9)
    summed = soft_score_matching_loss(model_fn, x0, sch, t=t, noise=noise, reduce_mean=False)
    assert summed.item() == pytest.approx(loss.item() * x0[0].numel() / 2, rel=1e-9)
    # The posterior mean minimises it: any perturbation that survives the blur costs loss.
    worse = soft_score_matching_loss(lambda x, tt: model_fn(x, tt) + 0.05, x0, sch, t=t, noise=noise)
    assert worse.item() > loss.item() * 1.05
    # A perturbation the blur removes completely costs nothing (here: the highest frequency at huge blur).
    high = torch.zeros(8, 8, dtype=F64)
    high[7, 7] = 1.0
    high = idct2(high)
    t1 = torch.ones(3000, dtype=F64)
    a = soft_score_matching_loss(model_fn, x0, sch, t=t1, noise=noise)
    b = soft_score_matching_loss(lambda x, tt: model_fn(x, tt) + 3 * high, x0, sch, t=t1, noise=noise)
    assert b.item() == pytest.approx(a.item(), rel=1e-6)


def test_soft_loss_time_scale_weighting_callable_and_gradients():
    sch = SoftDiffusionScheduler(num_train_timesteps=50, image_size=8)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    seen = {}

    def model_fn(x, t_in, scale=1.0):
        seen["t"] = t_in
        return net(x) * scale

    x0 = torch.rand(4, 1, 8, 8)
    t = torch.tensor([0.0, 0.2, 0.6, 1.0])
    loss = soft_score_matching_loss(model_fn, x0, sch, t=t, generator=torch.Generator().manual_seed(0), scale=2.0)
    torch.testing.assert_close(seen["t"], t * 49)  # a scheduler feeds its own model scale
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    soft_score_matching_loss(model_fn, x0, sch.corruption, t=t)
    torch.testing.assert_close(seen["t"], t)
    w = soft_score_matching_loss(
        model_fn,
        x0,
        sch.corruption,
        t=t,
        noise=torch.zeros_like(x0),
        weighting=lambda tt: 2 * torch.ones_like(tt),
    )
    u = soft_score_matching_loss(model_fn, x0, sch.corruption, t=t, noise=torch.zeros_like(x0), weighting="uniform")
    assert w.item() == pytest.approx(2 * u.item(), rel=1e-6)
    drawn = soft_score_matching_loss(model_fn, x0, sch, generator=torch.Generator().manual_seed(1))
    assert seen["t"].shape == (4,) and (seen["t"] >= 0).all() and (seen["t"] <= 49).all() and torch.isfinite(drawn)


def test_soft_loss_bad_input():
    sch = CorruptionSchedule.default(8, num_levels=20)
    x0 = torch.rand(2, 1, 8, 8)

    def ident(x, t):
        return x

    with pytest.raises(TypeError, match="CorruptionSchedule"):
        soft_score_matching_loss(ident, x0, object())
    with pytest.raises(ValueError, match="weighting"):
        soft_score_matching_loss(ident, x0, sch, weighting="snr")
    with pytest.raises(ValueError, match="time_scale"):
        soft_score_matching_loss(ident, x0, sch, time_scale=0)
    with pytest.raises(ValueError, match="model_fn must return"):
        soft_score_matching_loss(lambda x, t: x[:, :, :4], x0, sch)
    with pytest.raises(ValueError, match="smaller than"):
        soft_score_matching_loss(ident, torch.rand(2, 1, 4, 4), sch)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        soft_score_matching_loss(ident, x0, sch, t=torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="noise"):
        soft_score_matching_loss(ident, x0, sch, noise=torch.zeros(2, 1, 8, 4))
    with pytest.raises(ValueError, match="weighting"):
        soft_score_matching_loss(ident, x0, sch, weighting=lambda t: torch.ones(3))


# ---- the scheduler -------------------------------------------------------------------------------------------
def test_scheduler_timesteps_and_add_noise():
    sch = SoftDiffusionScheduler(num_train_timesteps=100, image_size=[8, 12])
    assert sch.init_noise_sigma == pytest.approx(0.1) and len(sch) == 100
    assert sch.corruption.image_size == (8, 12) and sch.corruption.blur_sigmas[-1].item() == pytest.approx(12.0)
    for n in (1, 2, 7, 33, 100):
        sch.set_timesteps(n)
        ts = sch.timesteps
        assert ts.dtype == torch.int64 and len(ts) == n and ts[0] == 99
        assert n == 1 or (ts[-1] == 0 and (ts.diff() < 0).all())
    x0 = torch.rand(3, 2, 8, 12)
    noise = torch.randn_like(x0)
    timesteps = torch.tensor([0, 50, 99])
    expected = sch.corruption.corrupt(x0, timesteps / 99.0, noise)
    torch.testing.assert_close(sch.add_noise(x0, noise, timesteps), expected)
    # Integer timesteps hit the level table exactly: level i of a default schedule with N levels.
    torch.testing.assert_close(
        sch.corruption.blur_sigma(torch.tensor([50 / 99], dtype=F64)), sch.corruption.blur_sigmas[50:51]
    )
    torch.testing.assert_close(sch.add_noise(x0, noise, 99), sch.corruption.corrupt(x0, torch.ones(3), noise))
    assert sch.scale_model_input(x0, 5) is x0


def test_scheduler_loop_matches_step_functions_and_ends_with_the_clean_estimate():
    sch = SoftDiffusionScheduler(num_train_timesteps=200, image_size=8, sampler="momentum")
    model = GaussianImages(sch.corruption, channels=3, seed=2)
    sch.set_timesteps(12)
    x = model.sample_xt(1.0, 16, torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ref = x.clone()
    for i, ts in enumerate(sch.timesteps):
        t = sch.continuous_time(ts).expand(16)
        x0_hat = model.posterior_mean(x, t)
        out = sch.step(x0_hat, ts, x, generator=g1)
        assert isinstance(out, SoftDiffusionSchedulerOutput)
        torch.testing.assert_close(out.pred_original_sample, x0_hat)
        if i + 1 < len(sch.timesteps):
            t_next = sch.continuous_time(sch.timesteps[i + 1]).expand(16)
            ref = soft_momentum_step(sch.corruption, model.posterior_mean(ref, t), ref, t, t_next, generator=g2)[0]
            torch.testing.assert_close(out.prev_sample, ref, atol=1e-12, rtol=0)
        else:
            torch.testing.assert_close(out.prev_sample, x0_hat)  # final: the clean estimate
        x = out.prev_sample
    prev, pred = sch.step(x0_hat, sch.timesteps[-1], x, return_dict=False)
    assert prev is pred or torch.equal(prev, pred)


@pytest.mark.parametrize("sampler", ["naive", "deterministic"])
def test_scheduler_uses_configured_sampler(sampler):
    sch = SoftDiffusionScheduler(
        num_train_timesteps=20, image_size=8, sampler=sampler, clip_sample=True, clip_sample_range=0.5
    )
    sch.set_timesteps(5)
    x = torch.randn(2, 1, 8, 8)
    x0_hat = torch.randn(2, 1, 8, 8)
    eta_gen = torch.Generator().manual_seed(0)
    out = sch.step(x0_hat, sch.timesteps[1], x, generator=eta_gen)
    clipped = x0_hat.clamp(-0.5, 0.5)
    torch.testing.assert_close(out.pred_original_sample, clipped)
    t = torch.full((2,), float(sch.timesteps[1]) / 19)
    t_next = torch.full((2,), float(sch.timesteps[2]) / 19)
    ref = SOFT_SAMPLERS[sampler](sch.corruption, clipped, x, t, t_next, generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(out.prev_sample, ref, atol=1e-6, rtol=0)


def test_scheduler_from_data_config_round_trip_and_initial_samples(tmp_path):
    g = torch.Generator().manual_seed(0)
    colours = torch.randn(400, 3, 1, 1, generator=g) * torch.tensor([0.3, 0.2, 0.1]).reshape(1, 3, 1, 1) + 0.2
    images = (colours + 0.3 * torch.randn(400, 3, 8, 8, generator=g)).clamp(-1, 1)
    sch = SoftDiffusionScheduler.from_data(images, num_train_timesteps=60)
    assert sch.config.image_size == [8, 8] and len(sch.config.blur_sigmas) == 60
    assert sch.corruption.blur_sigmas[0].item() == pytest.approx(0.5) and sch.corruption.blur_sigmas[
        -1
    ].item() == pytest.approx(8.0)
    sch.save_config(tmp_path)
    loaded = SoftDiffusionScheduler.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.corruption.blur_sigmas, sch.corruption.blur_sigmas)
    torch.testing.assert_close(loaded.corruption.noise_stds, sch.corruption.noise_stds)
    assert loaded.config.prior_mean == pytest.approx(sch.config.prior_mean)

    means = images.mean(dim=(-2, -1)).double()
    for reference in (None, images):
        x1 = loaded.initial_sample((3000, 3, 8, 8), reference=reference, generator=torch.Generator().manual_seed(1))
        assert x1.shape == (3000, 3, 8, 8) and x1.dtype == torch.float32
        got = x1.double().mean(dim=(-2, -1))
        torch.testing.assert_close(got.mean(0), means.mean(0), atol=0.02, rtol=0)
        torch.testing.assert_close(torch.cov(got.T), torch.cov(means.T), atol=6e-3, rtol=0)
        # Around its flat colour, each sample is pure noise of std s_1 = init_noise_sigma.
        resid = (x1 - x1.mean(dim=(-2, -1), keepdim=True)).std().item()
        assert resid == pytest.approx(loaded.init_noise_sigma * math.sqrt(63 / 64), rel=0.03)
    a = loaded.initial_sample((2, 3, 8, 8), generator=torch.Generator().manual_seed(4))
    b = loaded.initial_sample((2, 3, 8, 8), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_scheduler_bad_input():
    with pytest.raises(ValueError, match="sampler"):
        SoftDiffusionScheduler(sampler="ddim")
    with pytest.raises(ValueError, match="prediction_type"):
        SoftDiffusionScheduler(prediction_type="epsilon")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        SoftDiffusionScheduler(num_train_timesteps=1)
    with pytest.raises(ValueError, match="together"):
        SoftDiffusionScheduler(blur_sigmas=[0.0, 1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        SoftDiffusionScheduler(blur_sigmas=[0.0, 2.0, 1.0], noise_stds=[0.1, 0.1, 0.2])
    with pytest.raises(ValueError, match="`noise_min` must lie in \\(0.0, inf\\)"):
        SoftDiffusionScheduler(noise_min=0.0)
    with pytest.raises(ValueError, match="noise levels <= 0"):
        SoftDiffusionScheduler(blur_sigmas=[0.0, 1.0], noise_stds=[0.0, 0.1])
    with pytest.raises(ValueError, match="prior_cov"):
        SoftDiffusionScheduler(prior_mean=[0.0, 0.0], prior_cov=[[1.0]])
    with pytest.raises(ValueError, match="semi-definite"):
        SoftDiffusionScheduler(prior_mean=[0.0, 0.0], prior_cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="clip_sample_range"):
        SoftDiffusionScheduler(clip_sample_range=0)

    sch = SoftDiffusionScheduler(num_train_timesteps=20, image_size=8)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="set_timesteps"):
        sch.step(x, 19, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sch.set_timesteps(21)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sch.set_timesteps(0)
    sch.set_timesteps(4)
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        sch.step(x, 18, x)
    with pytest.raises(ValueError, match="single value"):
        sch.step(x, torch.tensor([19, 19]), x)
    with pytest.raises(ValueError, match="model_output"):
        sch.step(x[:1], 19, x)
    with pytest.raises(ValueError, match="smaller than"):
        sch.step(x[..., :4, :4], 19, x[..., :4, :4])
    with pytest.raises(TypeError, match="sample"):
        sch.step(x, 19, x.long())
    with pytest.raises(ValueError, match="timesteps must lie"):
        sch.add_noise(x, x, torch.tensor([0, 20]))
    with pytest.raises(ValueError, match="noise"):
        sch.add_noise(x, x[:1], 3)
    with pytest.raises(ValueError, match="no starting distribution"):
        sch.initial_sample((2, 1, 8, 8))
    with pytest.raises(ValueError, match="image size"):
        sch.initial_sample((2, 1, 4, 4), reference=x)
    with pytest.raises(ValueError, match="channels"):
        sch.initial_sample((2, 3, 8, 8), reference=x)
    weak = SoftDiffusionScheduler(
        num_train_timesteps=20, image_size=8, blur_sigma_max=2.0, prior_mean=[0.0], prior_cov=[[1.0]]
    )
    with pytest.raises(ValueError, match="not a flat colour"):
        weak.initial_sample((2, 1, 8, 8))
    assert weak.initial_sample((2, 1, 8, 8), reference=x).shape == (2, 1, 8, 8)


def test_fitted_prior_survives_from_config():
    import torch

    from sde_diffusers import SoftDiffusionScheduler

    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    scheduler = SoftDiffusionScheduler(image_size=8, num_train_timesteps=50)
    scheduler.set_prior(images)
    copy = SoftDiffusionScheduler.from_config(scheduler.config)
    assert copy.config.prior_mean == scheduler.config.prior_mean
    assert copy.config.prior_cov == scheduler.config.prior_cov
