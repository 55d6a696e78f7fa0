"""DCT Gaussian blur, corruption schedules and the Wasserstein-2 schedule fitter (sde_diffusers.corruption)."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import scipy.ndimage
import torch
from skimage import data as skdata
from sklearn.datasets import load_digits

from sde_diffusers.corruption import (
    CorruptionSchedule,
    DCTBlur,
    FrequencyStatistics,
    GaussianBlur,
    blur_response,
    dct2,
    dct_matrix,
    fit_wasserstein_schedule,
    gaussian_w2,
    idct2,
)

BLUR = DCTBlur()


def _scipy_blur(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy reference, one 2-D image at a time over the last two axes."""
    flat = x.reshape(-1, *x.shape[-2:])
    out = np.stack([scipy.ndimage.gaussian_filter(im, sigma, mode="reflect", truncate=truncate) for im in flat])
    return out.reshape(x.shape)


def _natural_images() -> dict[str, np.ndarray]:
    """Real images in [0, 1], non-square, 1 and 3 channels."""
    return {
        "astronaut": skdata.astronaut()[100:164, 180:260].transpose(2, 0, 1) / 255.0,  # 3 x 64 x 80
        "camera": skdata.camera()[200:248, 200:264][None] / 255.0,  # 1 x 48 x 64
        "digits": load_digits().images[:5] / 16.0,  # 5 x 8 x 8
    }


# ---- the DCT ----------------------------------------------------------------------------------------------
def test_dct_matrix_is_orthonormal_dct_ii():
    for n in (1, 2, 7, 16):
        d = dct_matrix(n, torch.float64)
        torch.testing.assert_close(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-13, rtol=0)
        ref = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)
        np.testing.assert_allclose(d.numpy(), ref, atol=1e-13)
    assert dct_matrix(8, torch.float32) is dct_matrix(8, torch.float32)  # cached


def test_dct2_matches_scipy_and_inverts():
    x = torch.rand(2, 3, 6, 9, dtype=torch.float64)
    ref = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(dct2(x).numpy(), ref, atol=1e-12)
    torch.testing.assert_close(idct2(dct2(x)), x, atol=1e-12, rtol=0)


# ---- blur against scipy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [2.0, 3.0, 5.0, 8.0, 16.0, 64.0, 200.0])
def test_blur_matches_scipy_for_sigma_at_least_2(dtype, sigma):
    # scipy's default truncate=4 suffices for 1e-4 (its truncation error is ~1e-5); see the next test.
    rng = np.random.default_rng(0)
    images = {**_natural_images(), "uniform_noise": rng.random((2, 3, 24, 40))}
    for name, x in images.items():
        got = BLUR(torch.tensor(x, dtype=dtype), sigma).double().numpy()
        err = np.abs(got - _scipy_blur(x, sigma)).max()
        assert err < 1e-4, (name, err)


@pytest.mark.parametrize("sigma", [3.0, 10.0, 60.0])
def test_blur_equals_scipy_to_rounding_once_truncation_is_removed(sigma):
    # With a long kernel the sampled Gaussian's aliasing (exp(-pi^2 sigma^2 / 2) <= 5e-20) is all that is
    # left: the two operators agree to float64 rounding, boundaries included, even for kernels far longer
    # than the image (scipy then reflects repeatedly, as the DCT's symmetric extension does).
    x = np.random.default_rng(1).random((3, 20, 33))
    err = np.abs(BLUR(torch.tensor(x), sigma).numpy() - _scipy_blur(x, sigma, truncate=12.0)).max()
    assert err < 1e-12


def test_blur_at_one_pixel_within_1e3_of_scipy_on_images():
    # At 1 px the sampled kernel's aliased copy, exp(-pi^2/2) = 0.7 % at the Nyquist frequency, shows.
    for name, x in _natural_images().items():
        for dtype in (torch.float32, torch.float64):
            err = np.abs(BLUR(torch.tensor(x, dtype=dtype), 1.0).double().numpy() - _scipy_blur(x, 1.0)).max()
            assert err < 1e-3, (name, dtype, err)
    # Worst case over [0, 1] images: half the l1 norm of the difference kernel, 5.6e-3 (Nyquist patterns).
    x = np.random.default_rng(2).random((4, 32, 32))
    err = np.abs(BLUR(torch.tensor(x), 1.0).numpy() - _scipy_blur(x, 1.0)).max()
    assert 1e-4 < err < 5.6e-3


def test_blur_differs_from_sampled_kernel_below_one_pixel():
    # At 0.5 px the sampled kernel is almost a delta while the heat kernel still halves fine detail.
    x = np.random.default_rng(3).random((2, 16, 16))
    err = np.abs(BLUR(torch.tensor(x), 0.5).numpy() - _scipy_blur(x, 0.5)).max()
    assert err > 0.02


def test_heat_multiplier_per_frequency():
    h, w, sigma = 6, 10, 1.7
    coeffs = torch.zeros(h, w, dtype=torch.float64)
    for ky, kx in [(0, 0), (1, 0), (0, 3), (5, 9), (2, 7)]:
        coeffs.zero_()
        coeffs[ky, kx] = 1.0
        basis = idct2(coeffs)
        expected = math.exp(-((math.pi * ky / h) ** 2 + (math.pi * kx / w) ** 2) * sigma**2 / 2)
        torch.testing.assert_close(BLUR(basis, sigma), expected * basis, atol=1e-13, rtol=0)
    resp = blur_response(sigma, (h, w))
    assert resp.shape == (h, w) and resp[0, 0] == 1.0
    torch.testing.assert_close(
        resp[5, 9],
        torch.tensor(math.exp(-((math.pi * 5 / h) ** 2 + (math.pi * 9 / w) ** 2) * sigma**2 / 2), dtype=torch.float64),
    )


# ---- algebra ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_blur_composes_exactly(dtype, tol):
    x = torch.rand(3, 2, 12, 17, dtype=dtype)
    for a, b in [(0.5, 0.7), (1.0, 3.0), (2.5, 11.0), (0.0, 4.0)]:
        twice = BLUR(BLUR(x, a), b)
        once = BLUR(x, math.hypot(a, b))
        assert (twice - once).abs().max().item() < tol, (a, b)
    sa = torch.tensor([0.3, 2.0, 7.0], dtype=dtype)
    sb = torch.tensor([1.1, 0.0, 5.0], dtype=dtype)
    assert (BLUR(BLUR(x, sa), sb) - BLUR(x, torch.sqrt(sa**2 + sb**2))).abs().max().item() < tol


def test_blur_identity_mean_preservation_self_adjoint_and_flat_limit():
    x = torch.rand(2, 3, 9, 14, dtype=torch.float64)
    torch.testing.assert_close(BLUR(x, 0.0), x, atol=1e-13, rtol=0)
    for sigma in (0.8, 4.0, 30.0):
        torch.testing.assert_close(BLUR(x, sigma).mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-13, rtol=0)
    y = torch.rand_like(x)
    torch.testing.assert_close((BLUR(x, 2.3) * y).sum(), (x * BLUR(y, 2.3)).sum(), atol=1e-10, rtol=0)
    flat = BLUR(x, 20 * 14)  # far beyond the image size: a constant image of the channel means
    torch.testing.assert_close(flat, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), atol=1e-10, rtol=0)


def test_per_sample_sigma_and_shapes():
    x = torch.rand(4, 5, 7, 11, dtype=torch.float64)  # 5 channels, non-square
    sigmas = torch.tensor([0.0, 0.9, 3.0, 25.0], dtype=torch.float64)
    out = BLUR(x, sigmas)
    for i in range(4):
        torch.testing.assert_close(out[i], BLUR(x[i], float(sigmas[i])), atol=1e-13, rtol=0)
    # Equal sigmas take the one-matrix path; the result must not change.
    torch.testing.assert_close(BLUR(x, torch.full((4,), 2.0, dtype=torch.float64)), BLUR(x, 2.0), atol=1e-13, rtol=0)
    assert BLUR(torch.rand(7, 11), 1.0).shape == (7, 11)
    assert BLUR(torch.rand(2, 3, 4, 7, 11), torch.ones(2)).shape == (2, 3, 4, 7, 11)
    assert BLUR(torch.rand(3, 1, 1, 5), 2.0).shape == (3, 1, 1, 5)
    assert GaussianBlur is DCTBlur


def test_half_precision_and_dtype_preserved():
    x = torch.rand(2, 3, 8, 8)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        y = BLUR(x.to(dtype), 2.0)
        assert y.dtype == dtype
        assert (y.float() - BLUR(x, 2.0)).abs().max() < 1e-2


def test_blur_gradients_flow_to_images_and_sigma():
    x = torch.rand(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.7, 2.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: BLUR(a, s), (x, sigma))
    scalar = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: BLUR(a, s), (x, scalar))
    x32 = torch.rand(2, 3, 8, 8, requires_grad=True)
    BLUR(x32, torch.tensor([1.0, 2.0])).square().sum().backward()
    assert x32.grad is not None and torch.isfinite(x32.grad).all() and x32.grad.abs().sum() > 0


def test_blur_bad_input():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="sigma"):
        BLUR(x, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        BLUR(x, float("nan"))
    with pytest.raises(ValueError, match="sigma"):
        BLUR(x, torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        BLUR(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        BLUR(x, torch.ones(2, 1))
    with pytest.raises(ValueError, match="3 dimensions"):
        BLUR(torch.rand(8, 8), torch.ones(8))
    with pytest.raises(TypeError, match="sigma"):
        BLUR(x, "2")
    with pytest.raises(TypeError, match="sigma"):
        BLUR(x, True)
    with pytest.raises(TypeError, match="sigma"):
        BLUR(x, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="floating"):
        BLUR(torch.ones(2, 3, 8, 8, dtype=torch.int64), 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        BLUR(np.ones((8, 8)), 1.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        BLUR(torch.rand(8), 1.0)
    with pytest.raises(ValueError, match="`n` must be"):
        dct_matrix(0)
    with pytest.raises(TypeError, match="dtype"):
        dct_matrix(4, torch.int32)


# ---- the schedule ------------------------------------------------------------------------------------------
def test_default_schedule_levels_and_interpolation():
    sch = CorruptionSchedule.default(32)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        sch.blur_sigma(t), torch.tensor([0.5, 0.5 * 64**0.5, 32.0], dtype=torch.float64), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        sch.noise_std(t), torch.tensor([0.01, 0.055, 0.1], dtype=torch.float64), rtol=1e-12, atol=0
    )
    assert sch.image_size == (32, 32) and sch.num_levels == 1000
    assert sch.max_blur_residual() < 0.008  # the most corrupted level is a flat colour
    dense = torch.linspace(0, 1, 5001, dtype=torch.float64)
    assert (sch.blur_sigma(dense).diff() >= 0).all() and (sch.noise_std(dense).diff() > 0).all()
    # A table is interpolated linearly and hit exactly at its knots, in the caller's dtype.
    tab = CorruptionSchedule([0.0, 1.0, 4.0], [0.1, 0.2, 0.2], image_size=(4, 6))
    t32 = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    assert tab.blur_sigma(t32).dtype == torch.float32
    torch.testing.assert_close(tab.blur_sigma(t32), torch.tensor([0.0, 0.5, 1.0, 2.5, 4.0]))
    torch.testing.assert_close(tab.noise_std(t32), torch.tensor([0.1, 0.15, 0.2, 0.2, 0.2]))
    assert CorruptionSchedule.default((16, 24)).blur_sigma(torch.ones(1)).item() == pytest.approx(24.0)


def test_corrupt_is_blur_plus_scaled_noise():
    sch = CorruptionSchedule.default(8, num_levels=50)
    x0 = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    expected = BLUR(x0, sch.blur_sigma(t)) + sch.noise_std(t)[:, None, None, None] * noise
    torch.testing.assert_close(sch.corrupt(x0, t, noise), expected, atol=1e-14, rtol=0)
    torch.testing.assert_close(sch.blur(x0, t), BLUR(x0, sch.blur_sigma(t)), atol=1e-14, rtol=0)
    a = sch.corrupt(x0, t, generator=torch.Generator().manual_seed(5))
    b = sch.corrupt(x0, t, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="non-decreasing"):
        CorruptionSchedule([0.0, 2.0, 1.0], [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="non-decreasing"):
        CorruptionSchedule([0.0, 1.0, 2.0], [0.1, 0.05, 0.2])
    with pytest.raises(ValueError, match="noise levels <= 0"):
        CorruptionSchedule([0.0, 1.0], [0.0, 0.1])
    with pytest.raises(ValueError, match="noise levels <= 0"):
        CorruptionSchedule([0.0, 1.0], [-0.1, 0.1])
    with pytest.raises(ValueError, match=">= 0"):
        CorruptionSchedule([-1.0, 1.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="same length"):
        CorruptionSchedule([0.0, 1.0, 2.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2"):
        CorruptionSchedule([1.0], [0.1])
    with pytest.raises(ValueError, match="finite"):
        CorruptionSchedule([0.0, float("inf")], [0.1, 0.1])
    with pytest.raises(ValueError, match="constant"):
        CorruptionSchedule([1.0, 1.0], [0.1, 0.1])
    with pytest.raises(TypeError, match="blur_sigmas"):
        CorruptionSchedule("0 1", [0.1, 0.2])
    with pytest.raises(ValueError, match="noise_min"):
        CorruptionSchedule.default(8, noise_min=0.0)
    with pytest.raises(ValueError, match="blur_sigma_min"):
        CorruptionSchedule.default(8, blur_sigma_min=0.0)
    with pytest.raises(ValueError, match="blur_sigma_max"):
        CorruptionSchedule.default(8, blur_sigma_min=4.0, blur_sigma_max=2.0)
    with pytest.raises(ValueError, match="noise_max"):
        CorruptionSchedule.default(8, noise_min=0.1, noise_max=0.01)
    with pytest.raises(ValueError, match="image_size"):
        CorruptionSchedule.default((8, 0))
    with pytest.raises(ValueError, match="num_levels"):
        CorruptionSchedule.default(8, num_levels=1)

    sch = CorruptionSchedule.default(16, num_levels=20)
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="smaller than the 16x16"):
        sch.corrupt(torch.rand(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="different from"):
        sch.blur(torch.rand(2, 3, 32, 32), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sch.corrupt(x, torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sch.corrupt(x, torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        sch.blur_sigma(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        sch.noise_std(0.5)
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        sch.noise_std(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="noise"):
        sch.corrupt(x, torch.zeros(2), torch.randn(2, 3, 16, 15))
    with pytest.raises(ValueError, match="channels, height, width"):
        sch.corrupt(torch.rand(3, 16, 16), torch.zeros(3))


# ---- Wasserstein-2 ------------------------------------------------------------------------------------------
def _gaussian_stats(channels: int, h: int, w: int, seed: int = 0) -> FrequencyStatistics:
    g = torch.Generator().manual_seed(seed)
    ky = torch.arange(h, dtype=torch.float64)[:, None]
    kx = torch.arange(w, dtype=torch.float64)[None, :]
    var = (1.0 / (1.0 + ky**2 + kx**2)).expand(channels, h, w) * torch.rand(
        channels, 1, 1, generator=g, dtype=torch.float64
    )
    mean = torch.randn(channels, h, w, generator=g, dtype=torch.float64) * 0.3
    return FrequencyStatistics(mean=mean.clone(), var=var.clone())


def test_gaussian_w2_matches_the_general_gaussian_formula():
    # Independent check in pixel space: W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2).
    c, h, w = 2, 3, 4
    stats = _gaussian_stats(c, h, w)
    d = h * w
    basis = idct2(torch.eye(d, dtype=torch.float64).reshape(d, h, w)).reshape(d, d).T  # columns: DCT basis images

    def pixel_gaussian(sigma, noise):
        blur_cols = BLUR(basis.T.reshape(d, h, w), sigma).reshape(d, d).T  # C_t applied to each basis image
        means, covs = [], []
        for ch in range(c):
            means.append(blur_cols @ stats.mean[ch].reshape(-1))
            covs.append(
                blur_cols @ torch.diag(stats.var[ch].reshape(-1)) @ blur_cols.T
                + noise**2 * torch.eye(d, dtype=torch.float64)
            )
        return torch.cat(means).numpy(), scipy.linalg.block_diag(*[cv.numpy() for cv in covs])

    for (sa, na), (sb, nb) in [
        ((0.5, 0.01), (1.5, 0.05)),
        ((2.0, 0.1), (0.0, 0.3)),
        ((1.0, 0.02), (1.0, 0.02)),
    ]:
        m1, s1 = pixel_gaussian(sa, na)
        m2, s2 = pixel_gaussian(sb, nb)
        r2 = scipy.linalg.sqrtm(s2)
        cross = scipy.linalg.sqrtm(r2 @ s1 @ r2).real
        ref = math.sqrt(max(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * cross), 0.0))
        got = gaussian_w2(stats, sa, na, sb, nb).item()
        assert got == pytest.approx(ref, abs=1e-6), ((sa, na), (sb, nb))


def test_frequency_statistics_from_images():
    x = torch.rand(50, 2, 5, 7, dtype=torch.float64)
    stats = FrequencyStatistics.from_images(x)
    coeffs = dct2(x)
    torch.testing.assert_close(stats.mean, coeffs.mean(0))
    torch.testing.assert_close(stats.var, coeffs.var(0, unbiased=False))
    assert stats.image_size == (5, 7)
    with pytest.raises(ValueError, match="batch >= 2"):
        FrequencyStatistics.from_images(x[:1])
    with pytest.raises(ValueError, match="var"):
        FrequencyStatistics(mean=stats.mean, var=-stats.var - 1)
    with pytest.raises(ValueError, match="same shape"):
        FrequencyStatistics(mean=stats.mean, var=stats.var[:, :4])


def test_fitted_schedule_spaces_levels_evenly_in_w2():
    stats = _gaussian_stats(3, 16, 16, seed=1)
    path = CorruptionSchedule.default(16, num_levels=200)
    fitted = fit_wasserstein_schedule(stats, path=path, num_levels=40)
    assert fitted.num_levels == 40 and fitted.image_size == (16, 16)
    blur, noise = fitted.blur_sigmas, fitted.noise_stds
    assert blur[0] == pytest.approx(0.5) and blur[-1] == pytest.approx(16.0)
    assert noise[0] == pytest.approx(0.01) and noise[-1] == pytest.approx(0.1)
    assert (blur.diff() >= 0).all() and (noise.diff() >= 0).all()
    steps = gaussian_w2(stats, blur[:-1], noise[:-1], blur[1:], noise[1:])
    assert (steps.std() / steps.mean()).item() < 0.01
    # The path's own (geometric) spacing is far from even for these statistics.
    base = CorruptionSchedule.default(16, num_levels=40)
    base_steps = gaussian_w2(
        stats, base.blur_sigmas[:-1], base.noise_stds[:-1], base.blur_sigmas[1:], base.noise_stds[1:]
    )
    assert (base_steps.std() / base_steps.mean()).item() > 0.2
    # Same arc length, so the evenly spaced steps are each about total / (levels - 1).
    assert steps.sum().item() == pytest.approx(base_steps.sum().item(), rel=0.02)


def test_fit_from_images_and_bad_input():
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    fitted = fit_wasserstein_schedule(x, num_levels=20, noise_max=0.2)
    assert fitted.noise_stds[-1].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="num_candidates"):
        fit_wasserstein_schedule(x, num_levels=20, num_candidates=10)
    with pytest.raises(ValueError, match="num_levels"):
        fit_wasserstein_schedule(x, num_levels=1)
    with pytest.raises(ValueError, match="built for"):
        fit_wasserstein_schedule(x, path=CorruptionSchedule.default(16))
    with pytest.raises(ValueError, match="not both"):
        fit_wasserstein_schedule(x, path=CorruptionSchedule.default(8), noise_max=0.2)
    with pytest.raises(TypeError, match="path"):
        fit_wasserstein_schedule(x, path="default")
    with pytest.raises(ValueError, match="noise levels must be > 0"):
        gaussian_w2(FrequencyStatistics.from_images(x), 1.0, 0.0, 2.0, 0.1)
