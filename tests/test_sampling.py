"""Every predictor and corrector of every SDE, run with the exact score, against the data distribution."""

import math

import pytest
import torch

from sde_diffusers import VESDE, VPSDE, GaussianMixture, SubVPSDE
from sde_diffusers.sampling import (
    CORRECTORS,
    PREDICTORS,
    ancestral_sampling_step,
    euler_maruyama_step,
    langevin_step,
    reverse_diffusion_step,
)

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}
SNR = {"ve": 0.16, "vp": 0.16, "subvp": 0.16}
EPS = {"ve": 1e-5, "vp": 1e-3, "subvp": 1e-3}
DATA = GaussianMixture(
    torch.tensor([[-1.5, 0.5], [1.0, -0.5]]), torch.tensor([[0.4, 0.6], [0.5, 0.3]]), torch.tensor([0.3, 0.7])
)
SINGLE = GaussianMixture.gaussian(torch.tensor([0.8, -0.4]), torch.tensor([0.5, 1.2]))
N_SAMPLES, N_STEPS = 3000, 150


def pc_sample(sde, score_fn, predictor, corrector, snr, eps, n=N_SAMPLES, steps=N_STEPS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = sde.prior_sampling((n, 2), generator=gen, dtype=torch.float64)
    x_mean = x
    for t in torch.linspace(sde.T, eps, steps, dtype=torch.float64):
        tv = t.expand(n)
        if corrector is not None:
            x, x_mean = corrector(sde, score_fn, x, tv, snr=snr, num_steps=steps, generator=gen)
        if predictor is not None:
            x, x_mean = predictor(sde, score_fn, x, tv, num_steps=steps, generator=gen)
    return x_mean


def distribution_error(x):
    """Largest standardised error of mean, std and the first mode's weight (in units of standard errors)."""
    n = x.shape[0]
    mean, std = DATA.mean, DATA.std
    z_mean = ((x.mean(0) - mean).abs() / (std / math.sqrt(n))).max()
    z_std = ((x.std(0) - std).abs() / (std / math.sqrt(2 * n))).max()
    frac = (x[:, 0] < -0.25).double().mean()  # the two modes are split at x_0 = -0.25
    z_w = (frac - 0.3).abs() / math.sqrt(0.3 * 0.7 / n)
    return max(float(z_mean), float(z_std), float(z_w))


def run(sde_name, predictor, corrector, score_scale=1.0):
    sde = SDES[sde_name]
    exact = DATA.score_fn(sde)
    return pc_sample(
        sde,
        lambda x, t: score_scale * exact(x, t),
        PREDICTORS.get(predictor),
        CORRECTORS.get(corrector),
        SNR[sde_name],
        EPS[sde_name],
    )


# Besides sampling error (a few standard errors), 150 steps leave a small discretisation bias.
TOL = 6.0


@pytest.mark.parametrize("corrector", ["none", *CORRECTORS])
@pytest.mark.parametrize("predictor", list(PREDICTORS))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_pc_samplers_reproduce_the_data(sde_name, predictor, corrector):
    assert distribution_error(run(sde_name, predictor, corrector)) < TOL


@pytest.mark.parametrize("t_value", [0.05, 0.5])
@pytest.mark.parametrize("corrector", list(CORRECTORS))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_correctors_converge_to_p_t(sde_name, corrector, t_value):
    """Langevin steps at one fixed time, from a wrong start, converge to p_t.

    (Corrector-only annealing through all levels cannot move mass between modes and needs far more steps:
    the known weakness of C2000 in the paper; the PC tests above cover correctors inside the sampler.)
    """
    if corrector == "annealed_langevin" and t_value < 0.5:
        pytest.skip("annealed Langevin's step (snr * std(t))^2 is tiny against the data variance at small t")
    sde = SDES[sde_name]
    n = N_SAMPLES
    gen = torch.Generator().manual_seed(1)
    t = torch.full((n,), t_value, dtype=torch.float64)
    score = SINGLE.score_fn(sde)
    x = torch.zeros(n, 2, dtype=torch.float64)
    for _ in range(400):
        x, _ = CORRECTORS[corrector](sde, score, x, t, snr=0.1, generator=gen)
    m, s = sde.marginal_coeffs(t[:1])
    mean, std = m * SINGLE.mean, torch.sqrt(m**2 * SINGLE.std**2 + s**2)
    assert ((x.mean(0) - mean).abs() / (std / math.sqrt(n))).max() < TOL
    # Unadjusted Langevin overshoots the variance by O(step size / variance): a few percent at snr 0.1.
    assert ((x.std(0) / std) - 1).abs().max() < 0.05


@pytest.mark.parametrize("scale", [-1.0, 2.0, 0.5])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_a_broken_score_is_caught(sde_name, scale):
    """The same check fails for a score with the wrong sign or scale."""
    x = run(sde_name, "reverse_diffusion", "none", score_scale=scale)
    assert not torch.isfinite(x).all() or distribution_error(x) > 3 * TOL


@pytest.mark.parametrize("sde_name", list(SDES))
def test_probability_flow_predictors_are_deterministic_and_agree(sde_name):
    sde = SDES[sde_name]
    score = DATA.score_fn(sde)
    gen = torch.Generator().manual_seed(3)
    x0 = sde.prior_sampling((2000, 2), generator=gen, dtype=torch.float64)
    xs = {}
    for name, fn in [("em", euler_maruyama_step), ("rd", reverse_diffusion_step)]:
        x = x0
        steps = 400
        for t in torch.linspace(sde.T, EPS[sde_name], steps, dtype=torch.float64):
            x, _ = fn(sde, score, x, t.expand(len(x)), num_steps=steps, probability_flow=True)
        xs[name] = x
    assert distribution_error(xs["em"]) < TOL
    # Both discretise the same ODE; trajectories stay close, far closer than the data's spread.
    assert (xs["em"] - xs["rd"]).abs().median() < 0.05


def test_explicit_noise_replays_a_step():
    sde = VPSDE()
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    z = torch.randn(4, 2, dtype=torch.float64)
    score = DATA.score_fn(sde)
    for fn in (euler_maruyama_step, reverse_diffusion_step, ancestral_sampling_step):
        a, mean_a = fn(sde, score, x, t, noise=z)
        b, _ = fn(sde, score, x, t, noise=z)
        torch.testing.assert_close(a, b)
        # x - x_mean is the noise term: exactly proportional to the draw
        ratio = (a - mean_a) / z
        torch.testing.assert_close(ratio, ratio[:1, :1].expand_as(ratio))
    with pytest.raises(ValueError, match="noise has shape"):
        euler_maruyama_step(sde, score, x, t, noise=torch.zeros(3, 2))


def test_reverse_diffusion_step_is_the_reference_update():
    sde = VESDE()
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 1e-5], dtype=torch.float64)
    z = torch.randn(3, 2, dtype=torch.float64)
    score = torch.randn(3, 2, dtype=torch.float64)
    out, mean = reverse_diffusion_step(sde, lambda *_: score, x, t, noise=z)
    idx = (t * 999).long()
    sig = sde.discrete_sigmas(dtype=torch.float64)
    prev = torch.where(idx == 0, torch.zeros(3, dtype=torch.float64), sig[(idx - 1).clamp_min(0)])
    g2 = (sig[idx] ** 2 - prev**2)[:, None]
    torch.testing.assert_close(mean, x + g2 * score)
    torch.testing.assert_close(out, mean + g2.sqrt() * z)


def test_langevin_step_size_batch_vs_per_sample():
    sde = VESDE()
    score = DATA.score_fn(sde)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    z = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    t = torch.full((6,), 0.3, dtype=torch.float64)
    full, _ = langevin_step(sde, score, x, t, snr=0.16, noise=z, per_sample=True)
    part, _ = langevin_step(sde, score, x[:3], t[:3], snr=0.16, noise=z[:3], per_sample=True)
    torch.testing.assert_close(full[:3], part)
    full_b, _ = langevin_step(sde, score, x, t, snr=0.16, noise=z)
    part_b, _ = langevin_step(sde, score, x[:3], t[:3], snr=0.16, noise=z[:3])
    assert not torch.allclose(full_b[:3], part_b)
    # The reference step size: 2 alpha (snr * mean||z|| / mean||score||)^2, alpha = 1 for VE
    g = score(x, t)
    step = 2 * (0.16 * z.norm(dim=1).mean() / g.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(full_b, x + step * g + (2 * step).sqrt() * z)


def test_generator_list_gives_per_sample_reproducibility():
    sde = VPSDE()
    score = DATA.score_fn(sde)
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    a, _ = euler_maruyama_step(sde, score, x, t, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    b, _ = euler_maruyama_step(sde, score, x[1:2], t[1:2], generator=[torch.Generator().manual_seed(1)])
    torch.testing.assert_close(a[1:2], b)


def test_bad_input():
    sde = VPSDE()
    score = DATA.score_fn(sde)
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="t must have shape"):
        euler_maruyama_step(sde, score, x, torch.zeros(2))
    with pytest.raises(TypeError, match="floating-point"):
        reverse_diffusion_step(sde, score, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="snr"):
        langevin_step(sde, score, x, torch.zeros(3), snr=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        ancestral_sampling_step(sde, score, x, torch.zeros(3), num_steps=0)
