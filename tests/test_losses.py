"""Score-matching losses against closed forms on Gaussian data.

Data ``x_0 ~ N(mu, diag(v))`` in two dimensions. Under ``x_t = m x_0 + s z`` the marginal is
``N(m mu, diag(tau))`` with ``tau = m^2 v + s^2``, so the exact score is ``-(x - m mu) / tau`` and every
minimum has a closed form. The coefficients ``m(t)``, ``s(t)``, ``g(t)^2`` are written out here by hand, not
taken from ``sde.py``, so a wrong formula in either place shows up.

Monte Carlo comparisons use ``|estimate - exact| < 5 standard errors`` with standard errors of about 1%
of the value or less, tight enough to catch a wrong sign or a missing factor of 2.
"""

import math

import pytest
import torch
from scipy import integrate

from sde_diffusers.losses import (
    PROJECTION_TYPES,
    ddpm_loss,
    denoising_score_matching_loss,
    exact_score_matching_loss,
    sample_time,
    sliced_score_matching_loss,
    smld_loss,
)
from sde_diffusers.models import DDPMppModel, NCSNppModel
from sde_diffusers.parameterization import make_score_fn
from sde_diffusers.sde import VESDE, VPSDE, SubVPSDE

torch.set_num_threads(1)

MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
VAR = torch.tensor([0.3, 2.0], dtype=torch.float64)
D = 2
SDES = {
    "ve": VESDE(sigma_min=0.01, sigma_max=50.0),
    "vp": VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": SubVPSDE(beta_min=0.1, beta_max=20.0),
}


# ---- closed forms ------------------------------------------------------------------------------------
def coeffs(name, t):
    """``(m(t), s(t), g(t)^2)`` written out from Song et al. (2021), for float or tensor ``t``."""
    exp = torch.exp if isinstance(t, torch.Tensor) else math.exp
    if name == "ve":
        s = 0.01 * (50.0 / 0.01) ** t
        return 1.0 + 0.0 * t, s, s**2 * 2.0 * math.log(50.0 / 0.01)
    log_m = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    beta = 0.1 + t * (20.0 - 0.1)
    m = exp(log_m)
    if name == "vp":
        return m, (1.0 - exp(2 * log_m)) ** 0.5, beta
    return m, 1.0 - exp(2 * log_m), beta * (1.0 - exp(4 * log_m))


def exact_score_fn(name):
    def score_fn(x, t):
        m, s, _ = coeffs(name, t)
        m, s = m[:, None], s[:, None]
        return -(x - m * MU) / (m**2 * VAR + s**2)

    return score_fn


def data(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return MU + VAR.sqrt() * torch.randn(n, D, generator=gen, dtype=torch.float64)


def dsm_minimum(name, t, reduce_mean=False, likelihood_weighting=False):
    """Irreducible DSM value at time ``t``: the conditional minus the marginal score energy, weighted."""
    m, s, g2 = coeffs(name, t)
    tau = [m**2 * v + s**2 for v in VAR.tolist()]
    if likelihood_weighting:
        per_dim = [g2 * (1.0 / s**2 - 1.0 / tk) for tk in tau]
    else:
        per_dim = [m**2 * v / tk for v, tk in zip(VAR.tolist(), tau, strict=True)]
    return sum(per_dim) / D if reduce_mean else 0.5 * sum(per_dim)


def assert_mc(per_sample, exact, n_se=5.0):
    """The mean of ``per_sample`` is within ``n_se`` standard errors of ``exact`` (and the SE is small)."""
    mean = per_sample.mean().item()
    se = per_sample.std().item() / math.sqrt(per_sample.numel())
    assert se < 0.02 * abs(exact) + 1e-12, f"test too noisy: se={se}, exact={exact}"
    assert abs(mean - exact) < n_se * se, f"mean {mean} vs exact {exact} (se {se})"


# ---- denoising score matching ------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("t0", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("reduce_mean,likelihood_weighting", [(False, False), (True, False), (False, True)])
def test_dsm_at_exact_score_attains_closed_form_minimum(name, t0, reduce_mean, likelihood_weighting):
    n = 40_000
    x0 = data(n)
    _, per_sample = denoising_score_matching_loss(
        exact_score_fn(name),
        SDES[name],
        x0,
        t=torch.full((n,), t0, dtype=torch.float64),
        reduce_mean=reduce_mean,
        likelihood_weighting=likelihood_weighting,
        generator=torch.Generator().manual_seed(1),
        return_per_sample=True,
    )
    assert_mc(per_sample, dsm_minimum(name, t0, reduce_mean, likelihood_weighting))


@pytest.mark.parametrize("name", SDES)
def test_dsm_excess_of_a_shifted_score_is_half_the_weighted_squared_shift(name):
    n, t0 = 40_000, 0.5
    x0, t = data(n), torch.full((n,), t0, dtype=torch.float64)
    noise = torch.randn(n, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, s, _ = coeffs(name, t0)
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64) / s
    exact = exact_score_fn(name)
    kwargs = dict(t=t, noise=noise, reduce_mean=False, return_per_sample=True)
    _, base = denoising_score_matching_loss(exact, SDES[name], x0, **kwargs)
    _, shifted = denoising_score_matching_loss(lambda x, tt: exact(x, tt) + shift, SDES[name], x0, **kwargs)
    _, scaled = denoising_score_matching_loss(lambda x, tt: 1.2 * exact(x, tt), SDES[name], x0, **kwargs)
    # 1/2 s^2 ||score + shift - target||^2 - 1/2 s^2 ||score - target||^2 has mean 1/2 s^2 ||shift||^2 = 0.065.
    assert_mc(shifted - base, 0.5 * s**2 * shift.pow(2).sum().item())
    assert scaled.mean() > base.mean() and shifted.mean() > base.mean()


@pytest.mark.parametrize(
    "name,reduce_mean,likelihood_weighting",
    [("ve", False, False), ("ve", True, True), ("vp", True, False), ("subvp", False, False)],
)
def test_dsm_over_time_matches_the_integrated_closed_form(name, reduce_mean, likelihood_weighting):
    n, eps = 100_000, 1e-5
    _, per_sample = denoising_score_matching_loss(
        exact_score_fn(name),
        SDES[name],
        data(n),
        eps=eps,
        reduce_mean=reduce_mean,
        likelihood_weighting=likelihood_weighting,
        generator=torch.Generator().manual_seed(3),
        return_per_sample=True,
    )
    value, _ = integrate.quad(lambda t: dsm_minimum(name, t, reduce_mean, likelihood_weighting), eps, 1.0, limit=200)
    assert_mc(per_sample, value / (1.0 - eps))


@pytest.mark.parametrize("name", SDES)
def test_likelihood_weighting_multiplies_the_score_error_by_g_squared(name):
    t = torch.tensor([1e-3, 0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    x0 = data(5)
    noise = torch.randn(5, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    score_fn = lambda x, tt: -x + 0.1 * torch.sin(3 * x)  # noqa: E731 - any score: the identity is pointwise
    common = dict(t=t, noise=noise, reduce_mean=True, return_per_sample=True)
    _, plain = denoising_score_matching_loss(score_fn, SDES[name], x0, **common)
    _, weighted = denoising_score_matching_loss(score_fn, SDES[name], x0, likelihood_weighting=True, **common)
    _, s, g2 = coeffs(name, t)
    # plain = ||s score + z||^2 / D, weighted = g^2 ||score + z / s||^2 / D = (g^2 / s^2) plain.
    torch.testing.assert_close(weighted, plain * g2 / s**2)


def test_sample_time_and_replayability():
    ve = SDES["ve"]
    t = sample_time(ve, 10_000, eps=0.2, generator=torch.Generator().manual_seed(0))
    assert t.shape == (10_000,) and t.min() >= 0.2 and t.max() <= 1.0
    assert abs(t.mean().item() - 0.6) < 0.01
    x0 = data(64)
    score_fn = exact_score_fn("ve")
    a = denoising_score_matching_loss(score_fn, ve, x0, generator=torch.Generator().manual_seed(5))
    b = denoising_score_matching_loss(score_fn, ve, x0, generator=torch.Generator().manual_seed(5))
    c = denoising_score_matching_loss(score_fn, ve, x0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(5)
    t = sample_time(ve, 64, generator=gen, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    assert torch.equal(denoising_score_matching_loss(score_fn, ve, x0, t=t, noise=noise), a)


# ---- discrete losses ---------------------------------------------------------------------------------
def test_smld_is_continuous_dsm_on_the_noise_grid():
    ve, n_levels = SDES["ve"], 10
    x0 = data(6)
    idx = torch.tensor([0, 1, 4, 5, 8, 9])
    noise = torch.randn(6, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seen = {}

    def score_fn(x, t):
        seen["x"], seen["t"] = x, t
        return -x / (1.0 + x.pow(2))

    _, smld = smld_loss(score_fn, ve, x0, num_scales=n_levels, timesteps=idx, noise=noise, return_per_sample=True)
    sigmas = 0.01 * (50.0 / 0.01) ** (idx.double() / (n_levels - 1))  # geometric levels, increasing
    torch.testing.assert_close(seen["x"], x0 + sigmas[:, None] * noise)
    torch.testing.assert_close(seen["t"], idx.double() / (n_levels - 1))
    # NCSN: sigma^2 * 1/2 ||score + z / sigma||^2
    expected = sigmas**2 * 0.5 * (score_fn(seen["x"], None) + noise / sigmas[:, None]).pow(2).sum(1)
    torch.testing.assert_close(smld, expected)
    _, dsm = denoising_score_matching_loss(
        score_fn,
        ve,
        x0,
        t=idx.double() / (n_levels - 1),
        noise=noise,
        reduce_mean=False,
        return_per_sample=True,
    )
    torch.testing.assert_close(smld, dsm)


def test_smld_minimum_and_its_continuous_limit():
    n, n_levels = 40_000, 10
    _, per_sample = smld_loss(
        exact_score_fn("ve"),
        SDES["ve"],
        data(n),
        num_scales=n_levels,
        generator=torch.Generator().manual_seed(8),
        return_per_sample=True,
    )
    grid = [i / (n_levels - 1) for i in range(n_levels)]
    assert_mc(per_sample, sum(dsm_minimum("ve", t) for t in grid) / n_levels)
    # As N grows the level average tends to the continuous DSM objective with eps -> 0.
    fine = [i / 999 for i in range(1000)]
    grid_value = sum(dsm_minimum("ve", t) for t in fine) / 1000
    continuous, _ = integrate.quad(lambda t: dsm_minimum("ve", t), 0.0, 1.0)
    assert abs(grid_value - continuous) < 2e-3 * continuous


def _alphas_cumprod(n):
    betas = torch.linspace(0.1 / n, 20.0 / n, n, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def test_ddpm_loss_uses_the_discrete_chain_and_integer_timesteps():
    vp, n = SDES["vp"], 1000
    x0 = data(4)
    idx = torch.tensor([0, 10, 500, 999])
    noise = torch.randn(4, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    seen = {}

    def eps_fn(x, timesteps, scale=1.0):
        seen["x"], seen["t"] = x, timesteps
        return scale * torch.tanh(x)

    _, per_sample = ddpm_loss(eps_fn, vp, x0, timesteps=idx, noise=noise, return_per_sample=True, scale=0.5)
    abar = _alphas_cumprod(n)[idx]
    torch.testing.assert_close(seen["x"], abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * noise)
    assert torch.equal(seen["t"], idx) and not seen["t"].is_floating_point()
    torch.testing.assert_close(per_sample, (0.5 * torch.tanh(seen["x"]) - noise).pow(2).mean(1))


def test_ddpm_minimum_and_agreement_with_continuous_vp_dsm():
    n = 40_000
    abar = _alphas_cumprod(1000)

    def exact_eps(x, i):  # E[z | x_i] on the discrete chain
        m, s = abar[i].sqrt()[:, None], (1 - abar[i]).sqrt()[:, None]
        return s * (x - m * MU) / (m**2 * VAR + s**2)

    _, per_sample = ddpm_loss(
        exact_eps, SDES["vp"], data(n), generator=torch.Generator().manual_seed(10), return_per_sample=True
    )
    discrete = (abar[:, None] * VAR / (abar[:, None] * VAR + 1 - abar[:, None])).mean().item()
    assert_mc(per_sample, discrete)
    # The DDPM chain's loss and the continuous VP objective (reduce_mean, eps = 1e-5) agree as N -> infinity.
    continuous, _ = integrate.quad(lambda t: dsm_minimum("vp", t, reduce_mean=True), 1e-5, 1.0)
    assert abs(discrete - continuous / (1 - 1e-5)) < 5e-3 * continuous


# ---- exact and sliced score matching -----------------------------------------------------------------
def test_hyvarinen_objective_at_the_exact_score_is_minus_half_its_energy():
    # Time-dependent: VP marginal at t = 0.3.
    n, t0 = 40_000, 0.3
    m, s, _ = coeffs("vp", t0)
    tau = m**2 * VAR + s**2
    x = m * data(n) + s * torch.randn(n, D, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    t = torch.full((n,), t0, dtype=torch.float64)
    score_fn = exact_score_fn("vp")
    _, per_sample = exact_score_matching_loss(score_fn, x, t, return_per_sample=True)
    torch.testing.assert_close(per_sample, -(1 / tau).sum() + 0.5 * score_fn(x, t).pow(2).sum(1))
    assert_mc(per_sample, -0.5 * (1 / tau).sum().item())
    # Time-free data score.
    _, per_sample = exact_score_matching_loss(lambda z: -(z - MU) / VAR, data(n), return_per_sample=True)
    assert_mc(per_sample, -0.5 * (1 / VAR).sum().item())


def _nonlinear_score(dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)  # not symmetric: a non-conservative field
    return lambda x: -x + 0.5 * torch.tanh(x @ a) + 0.2 * x.roll(1, dims=1) ** 2


@pytest.mark.parametrize("projection_type", PROJECTION_TYPES)
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_sliced_score_matching_agrees_with_exact_in_expectation(projection_type, variance_reduction):
    score_fn, reps = _nonlinear_score(3), 20_000
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    _, exact = exact_score_matching_loss(score_fn, x, return_per_sample=True)
    # Replicate each point: one projection per replica is an independent draw of the estimator.
    _, sliced = sliced_score_matching_loss(
        score_fn,
        x.repeat(reps, 1),
        projection_type=projection_type,
        variance_reduction=variance_reduction,
        generator=torch.Generator().manual_seed(13),
        return_per_sample=True,
    )
    sliced = sliced.reshape(reps, 4)
    for j in range(4):
        mean, se = sliced[:, j].mean().item(), sliced[:, j].std().item() / math.sqrt(reps)
        assert abs(mean - exact[j].item()) < 5 * se + 1e-9, (j, mean, exact[j].item(), se)
        assert se < 0.05


def test_rademacher_sliced_is_exact_for_a_diagonal_jacobian():
    score_fn = lambda x: -(x**3) + torch.sin(x)  # noqa: E731 - elementwise: diagonal Jacobian
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    _, exact = exact_score_matching_loss(score_fn, x, return_per_sample=True)
    _, sliced = sliced_score_matching_loss(
        score_fn,
        x,
        num_projections=3,
        variance_reduction=True,
        generator=torch.Generator().manual_seed(15),
        return_per_sample=True,
    )
    torch.testing.assert_close(sliced, exact)
    trace = (-3 * x**2 + torch.cos(x)).flatten(1).sum(1)
    torch.testing.assert_close(exact, trace + 0.5 * score_fn(x).flatten(1).pow(2).sum(1))
    v = torch.randint(0, 2, (1, *x.shape), generator=torch.Generator().manual_seed(16)).double() * 2 - 1
    _, plain = sliced_score_matching_loss(score_fn, x, projections=v, return_per_sample=True)
    torch.testing.assert_close(plain, trace + 0.5 * (score_fn(x) * v[0]).flatten(1).sum(1) ** 2)
    _, mean_reduced = exact_score_matching_loss(score_fn, x, reduce_mean=True, return_per_sample=True)
    torch.testing.assert_close(mean_reduced, exact / 6)


def test_dsm_and_exact_score_matching_differ_by_a_model_independent_constant():
    # VE at sigma = 1: J_DSM(s) = J_ESM(s) + D / (2 sigma^2) for every model s (Vincent, 2011).
    n, t0 = 100_000, math.log(100.0) / math.log(5000.0)
    _, sigma, _ = coeffs("ve", t0)
    x0 = data(n)
    noise = torch.randn(n, D, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    t = torch.full((n,), t0, dtype=torch.float64)
    x_t = x0 + sigma * noise
    models = {
        "exact": exact_score_fn("ve"),
        "linear": lambda x, tt: -x @ torch.tensor([[0.8, 0.3], [-0.2, 0.5]], dtype=torch.float64) + 0.1,
        "nonlinear": lambda x, tt: _nonlinear_score(2, seed=1)(x),
    }
    gaps = {}
    for key, score_fn in models.items():
        _, dsm = denoising_score_matching_loss(
            score_fn, SDES["ve"], x0, t=t, noise=noise, reduce_mean=False, return_per_sample=True
        )
        _, esm = exact_score_matching_loss(score_fn, x_t, t, return_per_sample=True)
        gaps[key] = dsm / sigma**2 - esm  # J_DSM - J_ESM, per sample
        assert_mc(gaps[key], D / (2 * sigma**2))
    assert_mc(gaps["linear"] - gaps["exact"] + 1.0, 1.0)
    assert_mc(gaps["nonlinear"] - gaps["exact"] + 1.0, 1.0)


def test_exact_and_sliced_losses_are_differentiable_in_model_parameters():
    x = data(64)
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    score_fn = lambda z: -a * z  # noqa: E731 - per-sample ISM = -a D + a^2 ||z||^2 / 2
    loss = exact_score_matching_loss(score_fn, x)
    (grad,) = torch.autograd.grad(loss, a)
    expected = -D + a.detach() * x.pow(2).sum(1).mean()
    torch.testing.assert_close(grad, expected)
    loss = sliced_score_matching_loss(score_fn, x, variance_reduction=True, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(loss, a)
    torch.testing.assert_close(grad, expected)


# ---- with the networks -------------------------------------------------------------------------------
def test_losses_with_the_tiny_networks():
    gen = torch.Generator().manual_seed(18)
    x0 = torch.randn(4, 1, 16, 16, generator=gen)
    vp = VPSDE()
    ddpm = DDPMppModel.from_preset("ddpmpp-tiny", num_class_embeds=2, init_scale=1.0)
    labels = torch.tensor([0, 1, 1, 0])
    score_fn = make_score_fn(ddpm, vp, ddpm.prediction_type, ddpm.time_input, class_labels=labels)
    t = torch.tensor([0.1, 0.4, 0.6, 0.95])
    noise = torch.randn(x0.shape, generator=gen)
    loss = denoising_score_matching_loss(score_fn, vp, x0, t=t, noise=noise)
    mean, std = vp.marginal_prob(x0, t)
    eps_pred = ddpm(mean + std.view(-1, 1, 1, 1) * noise, t * 999, class_labels=labels).sample
    torch.testing.assert_close(loss, (eps_pred - noise).pow(2).mean())  # DSM with an epsilon net = epsilon MSE
    loss.backward()
    assert all(p.grad is not None for p in ddpm.parameters())
    ddpm.zero_grad()
    ddpm_loss(ddpm, vp, x0, generator=gen, class_labels=labels).backward()
    assert ddpm.conv_in.weight.grad.abs().sum() > 0

    ve = VESDE()
    ncsn = NCSNppModel.from_preset("ncsnpp-tiny", init_scale=1.0)
    score_fn = make_score_fn(ncsn, ve, ncsn.prediction_type, ncsn.time_input)
    for loss in (
        denoising_score_matching_loss(score_fn, ve, x0, generator=gen, reduce_mean=False),
        denoising_score_matching_loss(score_fn, ve, x0, generator=gen, likelihood_weighting=True),
        smld_loss(score_fn, ve, x0, generator=gen),
    ):
        assert loss.dim() == 0 and torch.isfinite(loss)
        ncsn.zero_grad()
        loss.backward()
        assert ncsn.conv_in.weight.grad.abs().sum() > 0


# ---- errors ------------------------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors():
    ve, vp, subvp = SDES["ve"], SDES["vp"], SDES["subvp"]
    x0 = data(4)
    score_fn = exact_score_fn("ve")
    for eps in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="`eps` must lie in \\(0.0, 1.0\\)"):
            denoising_score_matching_loss(score_fn, ve, x0, eps=eps)
    with pytest.raises(TypeError, match="`eps` must be a number"):
        denoising_score_matching_loss(score_fn, ve, x0, eps=True)
    with pytest.raises(ValueError, match="noise must have the shape of the data"):
        denoising_score_matching_loss(score_fn, ve, x0, noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="t has 3 entries but x has batch size 4"):
        denoising_score_matching_loss(score_fn, ve, x0, t=torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="t must be floating-point times in \\[0, T\\]"):
        denoising_score_matching_loss(score_fn, ve, x0, t=torch.tensor([0.5, 0.5, 1.5, 0.5]))
    with pytest.raises(ValueError, match="positive perturbation std"):
        denoising_score_matching_loss(exact_score_fn("vp"), vp, x0, t=torch.tensor([0.5, 0.5, 0.0, 0.5]))
    with pytest.raises(ValueError, match="score_fn must return a tensor of the input's shape"):
        denoising_score_matching_loss(lambda x, t: x[:, :1], ve, x0)
    with pytest.raises(TypeError, match="sde must be an sde_diffusers.SDE"):
        denoising_score_matching_loss(score_fn, "ve", x0)
    with pytest.raises(ValueError, match="x0 must have shape \\(batch, ...\\)"):
        denoising_score_matching_loss(score_fn, ve, torch.zeros(4))
    with pytest.raises(TypeError, match="smld_loss needs a VESDE"):
        smld_loss(score_fn, vp, x0)
    with pytest.raises(TypeError, match="ddpm_loss needs a VPSDE"):
        ddpm_loss(lambda x, i: x, subvp, x0)
    with pytest.raises(ValueError, match="timesteps must be indices in \\[0, 10\\)"):
        smld_loss(score_fn, ve, x0, num_scales=10, timesteps=torch.tensor([0, 1, 2, 10]))
    with pytest.raises(TypeError, match="timesteps must be an integer tensor"):
        ddpm_loss(lambda x, i: x, vp, x0, timesteps=torch.zeros(4))
    with pytest.raises(ValueError, match="`num_scales` must be an integer >= 2"):
        smld_loss(score_fn, ve, x0, num_scales=1)
    with pytest.raises(ValueError, match="`projection_type` must be one of \\('rademacher', 'gaussian'\\)"):
        sliced_score_matching_loss(lambda x: -x, x0, projection_type="sphere")
    with pytest.raises(ValueError, match="`num_projections` must be an integer >= 1"):
        sliced_score_matching_loss(lambda x: -x, x0, num_projections=0)
    with pytest.raises(ValueError, match="projections must have shape \\(2, 4, 2\\)"):
        sliced_score_matching_loss(lambda x: -x, x0, num_projections=2, projections=torch.ones(1, 4, 2))
    with pytest.raises(ValueError, match="score_fn must return a tensor of the input's shape"):
        exact_score_matching_loss(lambda x: x.sum(1), x0)
