"""The corruption strategy (sde_diffusers.corruption.LinearCorruption): Gaussian SDEs and blur + noise behind one
interface, the one loss module taking either, and a third corruption written as one small class.

Closed forms on 2-D Gaussian data ``x_0 ~ N(mu, diag(v))``: under ``x_t = m x_0 + s z`` the posterior mean is
``E[x_0 | x_t] = mu + m v / (m^2 v + s^2) (x_t - m mu)``, and Soft Score Matching with the ``1 / s^2`` weighting
at that predictor equals ``mean_k m^2 v_k / (m^2 v_k + s^2)``. The coefficients are written out by hand here.
"""

import math

import pytest
import torch

from sde_diffusers.corruption import (
    CorruptionSchedule,
    GaussianCorruption,
    LinearCorruption,
    as_corruption,
)
from sde_diffusers.losses import denoising_score_matching_loss, sample_time, soft_score_matching_loss
from sde_diffusers.parameterization import make_score_fn
from sde_diffusers.schedulers import SoftDiffusionScheduler
from sde_diffusers.sde import VESDE, VPSDE, SubVPSDE

F64 = torch.float64
MU = torch.tensor([0.5, -1.0], dtype=F64)
VAR = torch.tensor([0.3, 2.0], dtype=F64)


def vp_coeffs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``m(t)`` and ``std(t)`` of the VP SDE with beta_min 0.1, beta_max 20 (Song et al. 2021, eq. 29)."""
    log_m = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return torch.exp(log_m), torch.sqrt(1.0 - torch.exp(2 * log_m))


def data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MU + VAR.sqrt() * torch.randn(n, 2, generator=g, dtype=F64)


def test_gaussian_corruption_is_the_sde_perturbation_kernel():
    corruption = GaussianCorruption(VPSDE(beta_min=0.1, beta_max=20.0))
    x0 = data(5)
    t = torch.tensor([1e-3, 0.1, 0.4, 0.7, 1.0], dtype=F64)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    m, s = vp_coeffs(t)
    torch.testing.assert_close(corruption.degrade(x0, t), m[:, None] * x0, rtol=1e-12, atol=0)
    torch.testing.assert_close(corruption.noise_std(t), s, rtol=1e-12, atol=0)
    torch.testing.assert_close(corruption.corrupt(x0, t, z), m[:, None] * x0 + s[:, None] * z, rtol=1e-12, atol=1e-15)
    # VE: C_t = I, s_t = sigma(t).
    ve = GaussianCorruption(VESDE(sigma_min=0.01, sigma_max=50.0))
    torch.testing.assert_close(ve.degrade(x0, t), x0)
    torch.testing.assert_close(ve.noise_std(t), 0.01 * (50.0 / 0.01) ** t)
    # Training times are U(eps, T), drawn exactly as losses.sample_time draws them.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    draws = GaussianCorruption(VPSDE(), eps=0.25).sample_time(4000, generator=g1, dtype=F64)
    assert torch.equal(draws, sample_time(VPSDE(), 4000, eps=0.25, generator=g2, dtype=F64))
    assert float(draws.min()) >= 0.25 and abs(float(draws.mean()) - 0.625) < 0.01


def test_blur_schedule_is_a_linear_corruption():
    schedule = CorruptionSchedule.default(8, num_levels=50)
    assert isinstance(schedule, LinearCorruption)
    x0 = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(schedule.degrade(x0, t), schedule.blur(x0, t))
    s = schedule.noise_std(t)
    torch.testing.assert_close(schedule.corrupt(x0, t, z), schedule.blur(x0, t) + s[:, None, None, None] * z)
    # Training times of a blur schedule: U(0, 1), the plain uniform draw.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(schedule.sample_time(7, generator=g1), torch.rand(7, generator=g2))
    # A scheduler hands over its schedule; anything else is refused with a clear error.
    scheduler = SoftDiffusionScheduler(num_train_timesteps=20, image_size=8)
    assert as_corruption(scheduler) is scheduler.corruption and as_corruption(schedule) is schedule
    with pytest.raises(TypeError, match="LinearCorruption"):
        as_corruption(VPSDE())


@pytest.mark.parametrize("t0", [0.05, 0.3, 0.8])
def test_soft_score_matching_under_an_sde_attains_the_closed_form_at_the_posterior_mean(t0):
    corruption = GaussianCorruption(VPSDE(beta_min=0.1, beta_max=20.0))
    x0 = data(100_000, seed=2)
    t = torch.full((len(x0),), t0, dtype=F64)
    m, s = (c[:, None] for c in vp_coeffs(t))

    def posterior_mean(x, t_in):
        return MU + m * VAR / (m**2 * VAR + s**2) * (x - m * MU)

    loss = soft_score_matching_loss(posterior_mean, x0, corruption, t=t, generator=torch.Generator().manual_seed(0))
    mt, st = vp_coeffs(torch.tensor(t0, dtype=F64))
    expected = float((mt**2 * VAR / (mt**2 * VAR + st**2)).mean())
    assert float(loss) == pytest.approx(expected, rel=0.02)  # 4 standard errors
    # Off the posterior mean by delta = 1 in every coordinate the loss grows by m^2 delta^2 / s^2 on average.
    shifted = soft_score_matching_loss(
        lambda x, tt: posterior_mean(x, tt) + 1.0, x0, corruption, t=t, generator=torch.Generator().manual_seed(0)
    )
    assert float(shifted - loss) == pytest.approx(float(mt**2 / st**2), rel=0.03)  # 4 standard errors


@pytest.mark.parametrize(
    "sde", [VESDE(sigma_min=0.01, sigma_max=50.0), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"]
)
def test_soft_score_matching_under_an_sde_is_dsm_of_an_x0_network(sde):
    # The same network through two losses: an x_0 predictor in the soft loss, and the score it implies
    # ((m h - x) / s^2, via make_score_fn with prediction_type="sample") in DSM with lambda(t) = s(t)^2.
    net = torch.nn.Linear(3, 2).double()

    def x0_net(x, t_in):
        return net(torch.cat([x, t_in[:, None]], dim=1))

    x0 = data(64, seed=4)
    g = torch.Generator().manual_seed(9)
    t = sample_time(sde, 64, generator=g, dtype=F64)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    soft = soft_score_matching_loss(x0_net, x0, GaussianCorruption(sde), t=t, noise=z, return_per_sample=True)
    score_fn = make_score_fn(x0_net, sde, "sample", "t")
    dsm = denoising_score_matching_loss(score_fn, sde, x0, t=t, noise=z, return_per_sample=True)
    torch.testing.assert_close(soft[1], dsm[1], rtol=1e-9, atol=1e-12)
    soft[0].backward()
    assert net.weight.grad.abs().sum() > 0


class ScaledNoise(LinearCorruption):
    """A third corruption in a few lines: ``C_t = (1 - t/2) I`` and ``s_t = 0.1 + t``."""

    def _degrade(self, x, t):
        return (1.0 - 0.5 * t).reshape(-1, *([1] * (x.dim() - 1))) * x

    def _noise_std(self, t):
        return 0.1 + t


def test_a_new_corruption_is_one_small_class_and_the_loss_takes_it():
    corruption = ScaledNoise()
    x0 = data(6, seed=1)
    t = torch.linspace(0.0, 1.0, 6, dtype=F64)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    c = (1.0 - 0.5 * t)[:, None]
    s = (0.1 + t)[:, None]
    torch.testing.assert_close(corruption.corrupt(x0, t, z), c * x0 + s * z)

    def h(x, t_in):
        return 0.5 * x

    per_sample = soft_score_matching_loss(h, x0, corruption, t=t, noise=z, return_per_sample=True)[1]
    x_t = c * x0 + s * z
    expected = ((c * (0.5 * x_t - x0)) ** 2).mean(dim=1) / s[:, 0] ** 2
    torch.testing.assert_close(per_sample, expected, rtol=1e-12, atol=0)
    uniform = soft_score_matching_loss(h, x0, corruption, t=t, noise=z, weighting="uniform", return_per_sample=True)
    torch.testing.assert_close(uniform[1], expected * s[:, 0] ** 2, rtol=1e-12, atol=0)


def test_the_strategy_validates_once_at_its_public_methods():
    corruption = GaussianCorruption(VPSDE())
    x0 = data(4)
    with pytest.raises(ValueError, match="positive perturbation std"):
        corruption.corrupt(x0, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match=r"t has 3 entries but x has batch size 4"):
        corruption.degrade(x0, torch.full((3,), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="noise must have the shape of the data"):
        corruption.corrupt(x0, torch.full((4,), 0.5, dtype=F64), torch.zeros(4, 3, dtype=F64))
    with pytest.raises(TypeError, match=r"t must be a torch.Tensor"):
        corruption.noise_std(0.5)
    with pytest.raises(ValueError, match=r"t must be floating-point times in \[0, T\]"):
        corruption.noise_std(torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"`eps` must lie in \(0.0, 1.0\)"):
        GaussianCorruption(VPSDE(), eps=0.0)
    with pytest.raises(TypeError, match="sde must be an sde_diffusers.SDE"):
        GaussianCorruption("vp")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        ScaledNoise().noise_std(torch.tensor([0.5, math.inf]))
    with pytest.raises(TypeError, match="x0 must be a floating-point tensor"):
        ScaledNoise().corrupt(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2))
