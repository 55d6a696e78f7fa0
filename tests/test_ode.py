"""Probability-flow ODE: the batched adaptive solver, the sigma-space Euler/Heun steps, and the adaptive SDE sampler.

References are closed forms: linear ODEs, Gaussian data (whose probability-flow map is linear and known), and
Gaussian mixtures (exact scores from ``sde_diffusers.toy``). scipy's ``solve_ivp`` checks the solver step by step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from sde_diffusers.sampling import adaptive_sde, solver
from sde_diffusers.sampling.adaptive_sde import adaptive_sde_step, sample_adaptive_sde
from sde_diffusers.sampling.ode import (
    ode_derivative,
    ode_euler_step,
    odeint,
    probability_flow_times,
    sample_probability_flow,
    sample_probability_flow_fixed,
    sigma_and_scale,
    solve_probability_flow,
    t_from_sigma,
)
from sde_diffusers.sde import VESDE, VPSDE, SubVPSDE
from sde_diffusers.toy import GaussianMixture

SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


RATES = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0], dtype=torch.float64)


MIX_8 = GaussianMixture.gaussian(torch.zeros(8), 0.5)


def linear_fn(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dy/dt = r_i cos(t) y, solved by y0 exp(r_i sin t); each sample has its own rate."""
    return RATES[:, None] * torch.cos(t)[:, None] * y


def linear_exact(y0: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    return y0 * torch.exp(RATES * (math.sin(t1) - math.sin(t0)))[:, None]


def gaussian_flow(sde, x, t_from, t_to, mean, std0):
    """Exact probability-flow map for data N(mean, diag(std0^2)): linear in x / m against sigma."""
    s_from, m_from = sigma_and_scale(sde, torch.tensor([t_from], dtype=torch.float64))
    s_to, m_to = (
        sigma_and_scale(sde, torch.tensor([t_to], dtype=torch.float64))
        if t_to is not None
        else (torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    )
    ratio = torch.sqrt((std0**2 + s_to**2) / (std0**2 + s_from**2))
    return m_to * (mean + (x / m_from - mean) * ratio)


# ---------------------------------------------------------------------------------------------------------
# odeint
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
@pytest.mark.parametrize("step_control", ["per_sample", "batch"])
@pytest.mark.parametrize("span", [(0.0, 2.0), (2.0, 0.5)])
def test_adaptive_solver_meets_its_tolerance(method, step_control, span):
    y0 = torch.ones(5, 3, dtype=torch.float64)
    sol = odeint(linear_fn, y0, *span, method=method, rtol=1e-7, atol=1e-7, step_control=step_control)
    exact = linear_exact(y0, *span)
    rel = ((sol.y - exact).abs() / exact.abs().clamp_min(1.0)).max()
    assert rel < 2e-5
    assert sol.nfe == int(sol.nfe_per_sample.max())
    assert torch.all(sol.num_steps > 0)


def test_batch_mode_reproduces_scipy_rk45_step_for_step():
    y0 = torch.linspace(0.5, 1.5, 15, dtype=torch.float64).reshape(5, 3)

    def np_fn(t, y):
        return (RATES[:, None].numpy() * math.cos(t) * y.reshape(5, 3)).ravel()

    ref = solve_ivp(np_fn, (0.0, 2.0), y0.numpy().ravel(), method="RK45", rtol=1e-5, atol=1e-5)
    sol = odeint(linear_fn, y0, 0.0, 2.0, method="rk45", rtol=1e-5, atol=1e-5, step_control="batch")
    assert sol.nfe == ref.nfev
    np.testing.assert_allclose(sol.y.numpy().ravel(), ref.y[:, -1], rtol=1e-12, atol=1e-12)


def test_per_sample_control_makes_samples_independent():
    """A sample's solution and cost do not depend on what else is in the batch."""
    y0 = torch.ones(5, 3, dtype=torch.float64)
    batch = odeint(linear_fn, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6)

    for i in range(5):
        alone = odeint(
            lambda t, y, i=i: RATES[i] * torch.cos(t)[:, None] * y,
            y0[i : i + 1],
            0.0,
            2.0,
            rtol=1e-6,
            atol=1e-6,
        )
        torch.testing.assert_close(batch.y[i : i + 1], alone.y, rtol=1e-13, atol=1e-13)
        assert int(batch.nfe_per_sample[i]) == alone.nfe
        assert int(batch.num_steps[i]) == int(alone.num_steps[0])
    # the zero-rate sample is trivial: the easy samples stop early, the batch pays only for the hardest
    assert int(batch.nfe_per_sample[2]) < batch.nfe


def test_nfe_accounting_of_dormand_prince():
    y0 = torch.ones(5, 2, dtype=torch.float64)
    sol = odeint(linear_fn, y0, 0.0, 1.0, rtol=1e-6, atol=1e-6)
    # f(y0), one evaluation to choose the first step, then 6 per attempted step (FSAL)
    attempts = sol.num_steps + sol.num_rejected
    assert sol.nfe == 2 + 6 * int(attempts.max())
    torch.testing.assert_close(sol.nfe_per_sample, 2 + 6 * attempts)


def test_lagged_termination_flag_costs_one_evaluation(monkeypatch):
    """The CUDA path reads the 'finished' flag one evaluation late; force it on the CPU to check it."""
    y0 = torch.ones(5, 3, dtype=torch.float64)
    eager = odeint(linear_fn, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6)

    class Lagged(solver.FlagReader):
        def __init__(self, device, lagged=None):
            super().__init__(device, lagged=True)

    eager_reader = solver.FlagReader
    monkeypatch.setattr(solver, "FlagReader", Lagged)
    lagged = odeint(linear_fn, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lagged.y, eager.y, rtol=0, atol=0)
    assert lagged.nfe == eager.nfe + 1
    torch.testing.assert_close(lagged.nfe_per_sample, eager.nfe_per_sample)

    monkeypatch.setattr(adaptive_sde, "FlagReader", Lagged)
    mix = GaussianMixture.gaussian(torch.zeros(8), 0.5)
    sde = VPSDE()
    kw = dict(shape=(4, 8), dtype=torch.float64, rtol=0.05)
    a = sample_adaptive_sde(mix.score_fn(sde), sde, generator=torch.Generator().manual_seed(0), **kw)
    monkeypatch.setattr(adaptive_sde, "FlagReader", eager_reader)
    b = sample_adaptive_sde(mix.score_fn(sde), sde, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a.sample, b.sample, rtol=0, atol=0)
    assert a.nfe == b.nfe + 2


@pytest.mark.parametrize("lagged", [False, True])
def test_running_out_of_steps_is_an_error_not_a_silent_partial_result(monkeypatch, lagged):
    class Reader(solver.FlagReader):
        def __init__(self, device, lagged_=None):
            super().__init__(device, lagged=lagged)

    monkeypatch.setattr(solver, "FlagReader", Reader)
    monkeypatch.setattr(adaptive_sde, "FlagReader", Reader)
    with pytest.raises(RuntimeError, match=r"odeint: not finished after max_steps=3 steps"):
        odeint(linear_fn, torch.ones(5, 3, dtype=torch.float64), 0.0, 2.0, rtol=1e-9, atol=1e-9, max_steps=3)
    mix = GaussianMixture.gaussian(torch.zeros(4), 0.5)
    with pytest.raises(RuntimeError, match=r"sample_adaptive_sde: not finished after max_steps=2"):
        sample_adaptive_sde(mix.score_fn(VPSDE()), VPSDE(), shape=(2, 4), dtype=torch.float64, max_steps=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_solve_does_not_synchronise_per_step():
    """On CUDA the controller never reads device values: only the input check synchronises, not the steps."""
    import warnings

    y0 = torch.ones(5, 3, dtype=torch.float64)
    cpu = odeint(linear_fn, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6)
    rates = RATES.cuda()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sol = odeint(
                lambda t, y: rates[:, None] * torch.cos(t)[:, None] * y,
                y0.cuda(),
                0.0,
                2.0,
                rtol=1e-6,
                atol=1e-6,
            )
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    assert syncs <= 2 < int(cpu.num_steps.max())
    assert sol.nfe == cpu.nfe + 1  # the lagged 'finished' flag costs one evaluation
    torch.testing.assert_close(sol.y.cpu(), cpu.y, rtol=1e-10, atol=1e-10)
    out = sample_adaptive_sde(MIX_8.score_fn(VPSDE()), VPSDE(), shape=(64, 8), device="cuda", rtol=0.05)
    assert out.sample.is_cuda and torch.isfinite(out.sample).all()


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    y0 = torch.ones(5, 1, dtype=torch.float64)
    exact = linear_exact(y0, 0.0, 1.0)
    errs = [(odeint(linear_fn, y0, 0.0, 1.0, method=method, num_steps=n).y - exact).abs().max() for n in (20, 40)]
    assert errs[0] / errs[1] == pytest.approx(2**order, rel=0.15)


def test_torchdiffeq_methods_are_available():
    y0 = torch.ones(5, 2, dtype=torch.float64)
    sol = odeint(linear_fn, y0, 0.0, 1.0, method="torchdiffeq:dopri5", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(sol.y, linear_exact(y0, 0.0, 1.0), rtol=1e-6, atol=1e-6)
    assert sol.nfe > 0


def test_solver_bad_input():
    y0 = torch.ones(2, 2)
    with pytest.raises(ValueError, match="method"):
        odeint(linear_fn, y0, 0.0, 1.0, method="rk99")
    with pytest.raises(ValueError, match="unknown torchdiffeq method"):
        odeint(linear_fn, y0, 0.0, 1.0, method="torchdiffeq:nope")
    for bad in (0.0, -1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rtol"):
            odeint(linear_fn, y0, 0.0, 1.0, rtol=bad)
        with pytest.raises(ValueError, match="atol"):
            odeint(linear_fn, y0, 0.0, 1.0, atol=bad)
    with pytest.raises(ValueError, match="num_steps"):
        odeint(linear_fn, y0, 0.0, 1.0, method="heun")
    with pytest.raises(ValueError, match="num_steps"):
        odeint(linear_fn, y0, 0.0, 1.0, method="dopri5", num_steps=10)
    with pytest.raises(ValueError, match="differ"):
        odeint(linear_fn, y0, 1.0, 1.0)
    with pytest.raises(ValueError, match="step_control"):
        odeint(linear_fn, y0, 0.0, 1.0, step_control="global")
    with pytest.raises(ValueError, match="NaN or infinite"):
        odeint(linear_fn, torch.tensor([[1.0, float("nan")]]), 0.0, 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        odeint(linear_fn, torch.ones(2, 2, dtype=torch.long), 0.0, 1.0)
    with pytest.raises(FloatingPointError, match="NaN"):
        odeint(lambda t, y: y * float("nan"), y0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        odeint(linear_fn, torch.ones(5, 2), 0.0, 1.0, rtol=1e-10, atol=1e-10, max_steps=3)


# ---------------------------------------------------------------------------------------------------------
# The probability-flow ODE in sigma
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_type", SDES)
def test_sigma_form_is_the_probability_flow_ode(sde_type):
    """dx/dt from sde.reverse(probability_flow=True) == (m'/m) x + m sigma'(t) * d(x/m)/dsigma."""
    sde = SDES[sde_type]()
    mix = GaussianMixture(torch.tensor([[-1.0, 0.5, 0.2], [1.0, -0.5, 0.3]]), 0.4)
    x = mix.sample(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    t = torch.linspace(0.05, 0.95, 6, dtype=torch.float64).requires_grad_(True)
    sigma, scale = sigma_and_scale(sde, t)
    dsigma = torch.autograd.grad(sigma.sum(), t, retain_graph=True)[0]
    dscale = torch.autograd.grad(scale.sum(), t)[0] if scale.requires_grad else torch.zeros_like(t)  # VE: m = 1
    t = t.detach()
    score = mix.score(x, t, sde)
    via_sigma = (dscale / scale.detach())[:, None] * x + (scale.detach() * dsigma)[:, None] * ode_derivative(
        sde, x, t, score
    )
    via_t = sde.reverse(mix.score_fn(sde), probability_flow=True).sde(x, t)[0]
    torch.testing.assert_close(via_sigma, via_t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_type", SDES)
def test_t_from_sigma_inverts_sigma(sde_type):
    sde = SDES[sde_type]()
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(t_from_sigma(sde, sigma_and_scale(sde, t)[0]), t, rtol=1e-10, atol=1e-12)


class _MarginalsOnly:
    def __init__(self, sde):
        self.marginal_coeffs = sde.marginal_coeffs


@pytest.mark.parametrize("sde_type", SDES)
def test_t_from_sigma_within_bounds_and_on_a_scheduler_view(sde_type):
    # Bounds force the bisection (also for VE) and must not move the answer; an object with only marginal_coeffs
    # (as a scheduler's SchedulerSDE view) is inverted the same way.
    sde = SDES[sde_type]()
    t = torch.tensor([0.05, 0.3, 0.7], dtype=torch.float64)
    sigma = sigma_and_scale(sde, t)[0]
    lo, hi = t - 0.04, torch.minimum(t + 0.2, torch.ones_like(t))
    torch.testing.assert_close(t_from_sigma(sde, sigma, lo, hi), t, rtol=1e-10, atol=1e-12)
    view = _MarginalsOnly(sde)
    torch.testing.assert_close(t_from_sigma(view, sigma, lo, hi), t, rtol=1e-10, atol=1e-12)
    # The bounds are respected: a target outside them lands on the nearer bound.
    torch.testing.assert_close(t_from_sigma(sde, sigma, t + 0.01, hi), t + 0.01, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sde_type", SDES)
def test_karras_spacing(sde_type):
    sde = SDES[sde_type]()
    t = probability_flow_times(sde, 12, spacing="karras", eps=1e-3)
    assert t[0] == sde.T and t[-1] == 1e-3 and torch.all(t[1:] < t[:-1])
    root = sigma_and_scale(sde, t)[0] ** (1 / 7)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1] - root[0]).expand(11), rtol=1e-8, atol=1e-10)
    uniform = probability_flow_times(sde, 12)
    torch.testing.assert_close(uniform, torch.linspace(1.0, 1e-3, 12, dtype=torch.float64))


@pytest.mark.parametrize("sde_type", SDES)
def test_euler_in_sigma_is_exact_for_point_data(sde_type):
    """With a point mass as data d(x/m)/dsigma is constant, so two Euler steps land on the point."""
    sde = SDES[sde_type]()
    point = torch.tensor([0.7, -0.3, 0.2], dtype=torch.float64)
    mix = GaussianMixture.gaussian(point, 1e-9)
    out = sample_probability_flow_fixed(
        mix.score_fn(sde),
        sde,
        shape=(8, 3),
        num_steps=2,
        solver="euler",
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert out.nfe == 2
    torch.testing.assert_close(out.sample, point.expand(8, 3), rtol=0, atol=1e-7)


@pytest.mark.parametrize("sde_type", SDES)
@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_fixed_steps_converge_to_the_exact_flow_of_gaussian_data(sde_type, solver, order):
    sde = SDES[sde_type]()
    mean = torch.tensor([0.5, -1.0], dtype=torch.float64)
    std0 = torch.tensor([0.3, 0.8], dtype=torch.float64)
    mix = GaussianMixture.gaussian(mean, std0)
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_flow(sde, x_T, 1.0, None, mean, std0)
    errs = []
    for n in (16, 32):
        out = sample_probability_flow_fixed(mix.score_fn(sde), sde, x_T, num_steps=n, solver=solver, spacing="karras")
        assert out.nfe == (n if solver == "euler" else 2 * n - 1)
        errs.append((out.sample - exact).abs().max())
    assert errs[1] < (0.2 if solver == "euler" else 0.05)
    assert math.log2(errs[0] / errs[1]) > order - 0.35


def test_step_functions_are_pure():
    sde = VPSDE()
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    d = ode_derivative(sde, x, t, -x)
    sigma, scale = sigma_and_scale(sde, t)
    x1 = ode_euler_step(x, d, sigma, 0.5 * sigma, scale, scale)
    x2 = ode_euler_step(x, d, sigma, 0.5 * sigma, scale, scale)
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    # sigma_next = 0 gives Tweedie's denoiser
    from sde_diffusers.parameterization import score_to_x0

    torch.testing.assert_close(
        ode_euler_step(x, d, sigma, torch.zeros_like(sigma), scale, torch.ones_like(scale)),
        score_to_x0(sde, -x, x, t),
    )


# ---------------------------------------------------------------------------------------------------------
# Samplers against the data distribution
# ---------------------------------------------------------------------------------------------------------
MIX = GaussianMixture(
    torch.tensor([[-1.5, 0.5], [1.0, -0.5]]), torch.tensor([[0.3, 0.4], [0.4, 0.3]]), torch.tensor([0.3, 0.7])
)


def check_mixture_samples(x: torch.Tensor, mix: GaussianMixture = MIX, tol: float = 0.06) -> None:
    ref = mix.sample(20000, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), ref.mean(0), rtol=0, atol=tol)
    torch.testing.assert_close(x.std(0), ref.std(0), rtol=tol, atol=0)
    frac_left = (x[:, 0] < -0.25).double().mean()
    assert abs(frac_left - 0.3) < tol


@pytest.mark.parametrize("sde_type", SDES)
def test_adaptive_ode_sampler_reproduces_the_data(sde_type):
    sde = SDES[sde_type]()
    out = sample_probability_flow(
        MIX.score_fn(sde),
        sde,
        shape=(3000, 2),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
        rtol=1e-4,
        atol=1e-4,
    )
    check_mixture_samples(out.sample)
    assert 0 < out.nfe < 400


@pytest.mark.parametrize("sde_type", SDES)
def test_heun_sampler_reproduces_the_data(sde_type):
    sde = SDES[sde_type]()
    out = sample_probability_flow_fixed(
        MIX.score_fn(sde),
        sde,
        shape=(3000, 2),
        num_steps=25,
        solver="heun",
        spacing="karras",
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    check_mixture_samples(out.sample)


@pytest.mark.parametrize("sde_type", ["ve", "vp"])
def test_adaptive_sde_sampler_reproduces_the_data(sde_type):
    """In 32 dimensions (the step controller averages its error over the dimensions of a sample)."""
    sde = SDES[sde_type]()
    gen = torch.Generator().manual_seed(0)
    means = torch.stack([torch.full((32,), -1.0), torch.full((32,), 1.0)]) + 0.3 * torch.randn(2, 32, generator=gen)
    mix = GaussianMixture(means, 0.4, torch.tensor([0.3, 0.7]))
    out = sample_adaptive_sde(mix.score_fn(sde), sde, shape=(2000, 32), generator=gen, dtype=torch.float64)
    x = out.sample
    ref = mix.sample(20000, generator=gen, dtype=torch.float64)
    # standard errors with 2000 samples: ~0.02 for a mean, ~0.016 for a std ratio, ~0.01 for the mode fraction
    assert (x.mean(0) - ref.mean(0)).abs().mean() < 0.05
    assert (x.std(0) / ref.std(0) - 1).abs().mean() < 0.04
    assert abs((x.mean(1) < 0).double().mean() - 0.3) < 0.035
    assert out.nfe % 2 == 1 and torch.all(out.nfe_per_sample <= out.nfe)  # 2 per attempt + 1 denoising


def test_adaptive_sde_step_accepts_and_rejects_by_the_error_norm():
    sde = VESDE()
    mix = GaussianMixture.gaussian(torch.zeros(4), 1.0)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 50
    t = torch.ones(2, dtype=torch.float64)
    h = torch.tensor([1e-4, 0.9], dtype=torch.float64)  # a tiny step is accepted, a huge one is not
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x1, x_prev, t1, h1, acc = adaptive_sde_step(sde, mix.score_fn(sde), x, x, t, h, noise=noise, rtol=1e-3, atol=1e-3)
    assert acc.tolist() == [True, False]
    assert t1[0] == 1 - 1e-4 and t1[1] == 1.0
    torch.testing.assert_close(x1[1], x[1], rtol=0, atol=0)
    assert h1[1] < h[1] and h1[0] > h[0]
    # the accepted state is the improved-Euler (Heun) extrapolation with the shared noise
    rsde = sde.reverse(mix.score_fn(sde))
    f1, g1 = rsde.sde(x[:1], t[:1])
    k1 = -1e-4 * f1 + g1 * 1e-2 * noise[:1]
    f2, g2 = rsde.sde(x[:1] + k1, t[:1] - 1e-4)
    k2 = -1e-4 * f2 + g2 * 1e-2 * noise[:1]
    torch.testing.assert_close(x1[:1], x[:1] + 0.5 * (k1 + k2))
    torch.testing.assert_close(x_prev[:1], x[:1] + k1)


def test_sampler_bad_input():
    sde = VPSDE()
    fn = MIX.score_fn(sde)
    with pytest.raises(ValueError, match="eps"):
        sample_probability_flow(fn, sde, shape=(2, 2), eps=0.0)
    with pytest.raises(ValueError, match="shape"):
        sample_probability_flow(fn, sde)
    with pytest.raises(ValueError, match="solver"):
        sample_probability_flow_fixed(fn, sde, shape=(2, 2), solver="rk4")
    with pytest.raises(ValueError, match="spacing"):
        sample_probability_flow_fixed(fn, sde, shape=(2, 2), spacing="cosine")
    with pytest.raises(ValueError, match="must match"):
        solve_probability_flow(lambda x, t: x[:, :1], sde, torch.ones(2, 2), 1.0, 0.1)
    with pytest.raises(ValueError, match="rtol"):
        sample_adaptive_sde(fn, sde, shape=(2, 2), rtol=0)
    with pytest.raises(ValueError, match="atol"):
        sample_adaptive_sde(fn, sde, shape=(2, 2), atol=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        sample_adaptive_sde(fn, sde, torch.tensor([[float("inf"), 0.0]]))
    with pytest.raises(FloatingPointError):
        sample_adaptive_sde(lambda x, t: x * float("nan"), sde, shape=(2, 2))
