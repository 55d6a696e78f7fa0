"""The SDE core against closed forms."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sde_diffusers import VESDE, VPSDE, SubVPSDE, get_sde

SDES = [
    VESDE(sigma_min=0.01, sigma_max=50.0),
    VPSDE(beta_min=0.1, beta_max=20.0),
    SubVPSDE(beta_min=0.1, beta_max=20.0),
]
IDS = ["ve", "vp", "subvp"]
T_GRID = torch.tensor([1e-5, 1e-3, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=torch.float64)


def reference_coeffs(sde, t):
    """The perturbation kernels written out independently of the library."""
    t = t.double().numpy()
    if isinstance(sde, VESDE):
        return np.ones_like(t), 0.01 * (50.0 / 0.01) ** t
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    mean = np.exp(-0.5 * integral)
    if isinstance(sde, SubVPSDE):
        return mean, 1.0 - np.exp(-integral)
    return mean, np.sqrt(1.0 - np.exp(-integral))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginal_prob_matches_closed_form(sde):
    x = torch.randn(len(T_GRID), 3, 4, 4, dtype=torch.float64)
    mean, std = sde.marginal_prob(x, T_GRID)
    ref_mean, ref_std = reference_coeffs(sde, T_GRID)
    np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-10)
    np.testing.assert_allclose(mean.numpy(), ref_mean[:, None, None, None] * x.numpy(), rtol=1e-10)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_sde_matches_closed_form(sde):
    x = torch.randn(len(T_GRID), 5, dtype=torch.float64)
    drift, diffusion = sde.sde(x, T_GRID)
    t = T_GRID.numpy()
    if isinstance(sde, VESDE):
        sigma = 0.01 * (5000.0) ** t
        np.testing.assert_allclose(diffusion.numpy(), sigma * np.sqrt(2 * math.log(5000.0)), rtol=1e-10)
        assert torch.all(drift == 0)
        return
    beta = 0.1 + t * 19.9
    np.testing.assert_allclose(drift.numpy(), -0.5 * beta[:, None] * x.numpy(), rtol=1e-10)
    g2 = beta if isinstance(sde, VPSDE) else beta * (1 - np.exp(-2 * (0.1 * t + 0.5 * 19.9 * t**2)))
    np.testing.assert_allclose(diffusion.numpy() ** 2, g2, rtol=1e-8)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginals_solve_the_moment_odes(sde):
    """dm/dt = f m and d(s^2)/dt = 2 f s^2 + g^2: ties ``marginal_coeffs`` to ``sde`` (catches a factor of 2)."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    m, s = sde.marginal_coeffs(t)
    m_p, s_p = sde.marginal_coeffs(t + h)
    m_m, s_m = sde.marginal_coeffs(t - h)
    ones = torch.ones(len(t), 1, dtype=torch.float64)
    f, g = sde.sde(ones, t)
    f = f[:, 0]
    np.testing.assert_allclose(((m_p - m_m) / (2 * h)).numpy(), (f * m).numpy(), rtol=1e-6, atol=1e-9)
    dvar = (s_p**2 - s_m**2) / (2 * h)
    np.testing.assert_allclose(dvar.numpy(), (2 * f * s**2 + g**2).numpy(), rtol=1e-5)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_forward_simulation_reproduces_marginals(sde):
    gen = torch.Generator().manual_seed(0)
    n, mu, sd = 20000, torch.tensor([1.5, -0.5]), torch.tensor([0.3, 1.0])
    x = mu + sd * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    steps, t_end = 2000, 0.6
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=torch.float64)
        drift, diffusion = sde.sde(x, t)
        x = x + drift * dt + diffusion[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    m, s = sde.marginal_coeffs(torch.tensor([t_end], dtype=torch.float64))
    true_mean, true_std = m * mu, torch.sqrt(m**2 * sd**2 + s**2)
    se = true_std / math.sqrt(n)
    assert torch.all((x.mean(0) - true_mean).abs() < 4 * se + 0.01 * true_std)
    assert torch.all((x.std(0) - true_std).abs() < 4 * true_std / math.sqrt(2 * n) + 0.01 * true_std)


def test_discretize_matches_reference_chains():
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([1e-5, 0.25, 0.5, 1.0], dtype=torch.float64)
    idx = (t * 999).long()
    ve = VESDE()
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 1000))
    f, g = ve.discretize(x, t)
    prev = np.where(idx.numpy() == 0, 0.0, sigmas[np.maximum(idx.numpy() - 1, 0)])
    np.testing.assert_allclose(g.numpy(), np.sqrt(sigmas[idx.numpy()] ** 2 - prev**2), rtol=1e-10)
    assert torch.all(f == 0)
    vp = VPSDE()
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    f, g = vp.discretize(x, t)
    b = betas[idx.numpy()]
    np.testing.assert_allclose(f.numpy(), (np.sqrt(1 - b) - 1)[:, None] * x.numpy(), rtol=1e-10)
    np.testing.assert_allclose(g.numpy(), np.sqrt(b), rtol=1e-10)
    sub = SubVPSDE()
    f, g = sub.discretize(x, t)
    drift, diffusion = sub.sde(x, t)
    np.testing.assert_allclose(f.numpy(), drift.numpy() / 1000, rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), diffusion.numpy() * math.sqrt(1e-3), rtol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior_matches_the_marginal_at_T(sde):
    z = sde.prior_sampling((3, 2, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    std = 50.0 if isinstance(sde, VESDE) else 1.0
    ref = stats.norm(0, std).logpdf(z.reshape(3, -1).numpy()).sum(1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), ref, rtol=1e-10)
    _, s_T = sde.marginal_coeffs(torch.ones(1, dtype=torch.float64))
    assert abs(float(s_T) - std) / std < 1e-3
    big = sde.prior_sampling((200000,), generator=torch.Generator().manual_seed(2))
    assert abs(big.std().item() / std - 1) < 0.01


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_reverse_sde_and_probability_flow(sde):
    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    score = torch.randn(3, 4, dtype=torch.float64)
    f, g = sde.sde(x, t)
    drift, diffusion = sde.reverse(lambda *_: score).sde(x, t)
    torch.testing.assert_close(drift, f - g[:, None] ** 2 * score)
    torch.testing.assert_close(diffusion, g)
    drift, diffusion = sde.reverse(lambda *_: score, probability_flow=True).sde(x, t)
    torch.testing.assert_close(drift, f - 0.5 * g[:, None] ** 2 * score)
    assert torch.all(diffusion == 0)
    fd, gd = sde.discretize(x, t)
    rf, rg = sde.reverse(lambda *_: score).discretize(x, t)
    torch.testing.assert_close(rf, fd - gd[:, None] ** 2 * score)
    torch.testing.assert_close(rg, gd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_dtypes_are_preserved(sde, dtype):
    x = torch.randn(2, 3, dtype=dtype)
    t = torch.tensor([0.3, 0.7], dtype=dtype)
    for out in (*sde.marginal_prob(x, t), *sde.sde(x, t), *sde.discretize(x, t)):
        assert out.dtype == dtype
    assert sde.prior_sampling((2, 3), dtype=dtype).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_cuda(sde):
    x = torch.randn(2, 3, device="cuda")
    t = torch.tensor([0.3, 0.7], device="cuda")
    assert sde.marginal_prob(x, t)[0].device.type == "cuda"
    assert sde.discretize(x, t)[1].device.type == "cuda"


def test_bad_input():
    sde = VPSDE()
    with pytest.raises(ValueError, match="shape"):
        sde.marginal_prob(torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="batch size"):
        sde.sde(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(TypeError, match="t must be a torch.Tensor"):
        sde.discretize(torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="`N` must be"):
        VPSDE(N=0)
    with pytest.raises(ValueError, match="beta_min"):
        SubVPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="sde_type"):
        get_sde("edm")
