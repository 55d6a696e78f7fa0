"""Soft Diffusion's linear corruptions: DCT-domain Gaussian blur plus a little noise (Daras et al. 2022).

A corruption level is ``x_t = C_t x_0 + s_t * eta`` with ``C_t`` a Gaussian blur of standard deviation
``blur_sigma(t)`` pixels and ``s_t = noise_std(t)`` a small noise level. Everything about it lives here:

* :class:`DCTBlur` (alias :data:`GaussianBlur`) applies the blur. With reflective (half-sample symmetric)
  boundaries a Gaussian blur is *diagonal in the 2-D DCT-II basis*: frequency ``(k_y, k_x)`` of an
  ``H x W`` image is multiplied by ``exp(-(pi k_y / H)^2 sigma^2 / 2) * exp(-(pi k_x / W)^2 sigma^2 / 2)``,
  the heat kernel run for time ``sigma^2 / 2``. Each axis is therefore one ``n x n`` matrix
  ``D^T diag(g) D`` (``D`` the orthonormal DCT-II matrix), and the blur is two small matrix products whose
  cost does not depend on ``sigma``. The blur is exact at every strength, differentiable in the image and
  in ``sigma``, and composes exactly: ``blur(blur(x, a), b) == blur(x, sqrt(a^2 + b^2))``. It is never
  inverted (high frequencies are damped by factors down to ``exp(-pi^2 sigma^2)``).
* :class:`CorruptionSchedule` maps a time ``t`` in ``[0, 1]`` to ``(blur_sigma(t), noise_std(t))`` by
  linear interpolation in a table of levels, checks the levels (both non-decreasing, noise > 0) and
  applies ``C_t`` and the full corruption.
* :func:`fit_wasserstein_schedule` re-spaces the levels of a schedule so that consecutive corrupted
  distributions are equally far apart in Wasserstein-2 distance, treating the data as a Gaussian that is
  independent across DCT frequencies (statistics from a data batch, :class:`FrequencyStatistics`); for such
  Gaussians the distance has a closed form per frequency (:func:`gaussian_w2`).

Difference from ``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect")``: scipy convolves with the
*sampled* Gaussian (truncated at ``truncate * sigma`` and renormalised), whose frequency response is the
continuous one plus aliased copies, ``sum_m exp(-(w - 2 pi m)^2 sigma^2 / 2)``. The largest copy is
``exp(-pi^2 sigma^2 / 2)`` at the Nyquist frequency: 7e-3 at 1 px, 3e-9 at 2 px. So the two agree to
rounding for ``sigma >= 2`` px and to about 1e-3 at 1 px, and differ visibly below (at 0.5 px the sampled
kernel is almost a delta while the heat kernel still damps the Nyquist frequency to 29 %). Both use the
same boundary: scipy's ``"reflect"`` is the half-sample symmetric extension implied by the DCT-II.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

__all__ = [
    "DCTBlur",
    "GaussianBlur",
    "CorruptionSchedule",
    "FrequencyStatistics",
    "dct_matrix",
    "dct2",
    "idct2",
    "blur_response",
    "gaussian_w2",
    "fit_wasserstein_schedule",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---- the DCT ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _dct_matrix_cached(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    # Built in float64 and cast once, so float32 users get the correctly rounded matrix.
    return d.to(device=device, dtype=dtype)


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` of size ``n x n`` (rows are frequencies), cached per (n, dtype, device).

    ``D @ v`` is the DCT-II of ``v`` and ``D.T @ V`` its inverse (``D`` is orthogonal).

    Args:
        n (`int`): signal length, at least 1.
        dtype (`torch.dtype`, defaults to `torch.float32`): a floating dtype.
        device (`torch.device` or `str`, optional): where the matrix lives (default CPU).

    Returns:
        `torch.Tensor` of shape `(n, n)`. Do not modify it in place: it is shared.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return _dct_matrix_cached(n, dtype, torch.device(device if device is not None else "cpu"))


def _check_image(x: object, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (..., height, width), got shape {tuple(x.shape)}")
    return x


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision matrix products lose too much on the DCT round trip; compute in float32 for those.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dimensions (``D_H x D_W^T``).

    Args:
        x (`torch.Tensor` of shape `(..., H, W)`): floating-point images.

    Returns:
        `torch.Tensor` of the same shape: the coefficients, ``[..., k_y, k_x]``.
    """
    _check_image(x)
    cdt = _compute_dtype(x.dtype)
    dh = dct_matrix(x.shape[-2], cdt, x.device)
    dw = dct_matrix(x.shape[-1], cdt, x.device)
    return (dh @ x.to(cdt) @ dw.T).to(x.dtype)


def idct2(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2` (``D_H^T X D_W``).

    Args:
        coeffs (`torch.Tensor` of shape `(..., H, W)`): DCT-II coefficients.

    Returns:
        `torch.Tensor` of the same shape: the images.
    """
    _check_image(coeffs, "coeffs")
    cdt = _compute_dtype(coeffs.dtype)
    dh = dct_matrix(coeffs.shape[-2], cdt, coeffs.device)
    dw = dct_matrix(coeffs.shape[-1], cdt, coeffs.device)
    return (dh.T @ coeffs.to(cdt) @ dw).to(coeffs.dtype)


# ---- the blur ---------------------------------------------------------------------------------------
def _axis_response(n: int, sigma: torch.Tensor) -> torch.Tensor:
    """Heat-kernel multipliers ``exp(-(pi k / n)^2 sigma^2 / 2)`` for k = 0..n-1; shape ``sigma.shape + (n,)``."""
    k = torch.arange(n, dtype=sigma.dtype, device=sigma.device)
    g = torch.exp(-0.5 * (math.pi * k / n) ** 2 * sigma.unsqueeze(-1) ** 2)
    # Flush multipliers below eps^4 (2e-28 in float32) to zero: they change nothing representable, but as
    # subnormal numbers they would slow the matrix products on CPUs several-fold at mid-range sigmas.
    return g.masked_fill(g < torch.finfo(g.dtype).eps ** 4, 0.0)


def blur_response(
    sigma: float | torch.Tensor, size: int | Sequence[int], dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Multiplier of every DCT-II frequency under a Gaussian blur of standard deviation ``sigma`` pixels.

    Args:
        sigma (`float` or `torch.Tensor` of any shape): blur standard deviation(s), >= 0.
        size (`int` or `(H, W)`): image size.
        dtype (`torch.dtype`, defaults to `torch.float64`): dtype of the result when ``sigma`` is a number.

    Returns:
        `torch.Tensor` of shape ``sigma.shape + (H, W)``: ``r[..., k_y, k_x]`` in ``(0, 1]``.
    """
    h, w = _as_size(size, "size")
    s = _as_sigma(sigma, dtype)
    return _axis_response(h, s).unsqueeze(-1) * _axis_response(w, s).unsqueeze(-2)


def _as_size(size: object, name: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise ValueError(f"{name} must be a positive integer or a pair (height, width) of them, got {size!r}")
    return int(size[0]), int(size[1])


def _as_sigma(sigma: object, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, torch.Tensor)):
        raise TypeError(f"sigma must be a number or a torch.Tensor, got {type(sigma).__name__}")
    if isinstance(sigma, torch.Tensor):
        if not sigma.is_floating_point():
            raise TypeError(f"sigma must be a floating-point tensor, got dtype {sigma.dtype}")
        s = sigma.to(device=device if device is not None else sigma.device, dtype=dtype)
    else:
        s = torch.tensor(float(sigma), dtype=dtype, device=device)
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma if not isinstance(sigma, torch.Tensor) else s}")
    return s


class DCTBlur:
    """Exact Gaussian blur with reflective boundaries, diagonal in the 2-D DCT-II basis.

    ``apply(x, sigma)`` multiplies DCT frequency ``(k_y, k_x)`` of each ``H x W`` image by
    ``exp(-(pi k_y / H)^2 sigma^2 / 2) exp(-(pi k_x / W)^2 sigma^2 / 2)``. It is computed as
    ``A_H(sigma) @ x @ A_W(sigma)`` with ``A_n = D_n^T diag(g_n(sigma)) D_n``: two small matrix products per
    image, the same cost at every ``sigma``. It works for any batch shape, channel count and (non-square)
    size, in float32/float64 (half precision is computed in float32), on any device, and gradients flow to
    both ``x`` and a tensor ``sigma``. The DCT matrices are cached per (size, dtype, device).

    Example:
        >>> blur = DCTBlur()
        >>> y = blur(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 4.0, 32.0]))  # one sigma per image
    """

    def apply(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Blur ``x`` by ``sigma`` pixels.

        Args:
            x (`torch.Tensor` of shape `(..., H, W)`): floating-point images, e.g. `(batch, channels, H, W)`.
            sigma (`float`, 0-d `torch.Tensor`, or `torch.Tensor` of shape `(batch,)`): blur standard
                deviation in pixels, >= 0 (0 is the identity). A ``(batch,)`` tensor gives one blur per
                leading index of ``x`` (which then needs at least 3 dimensions).

        Returns:
            `torch.Tensor`: the blurred images, same shape and dtype as ``x``.
        """
        _check_image(x)
        cdt = _compute_dtype(x.dtype)
        s = _as_sigma(sigma, cdt, x.device)
        h, w = x.shape[-2], x.shape[-1]
        if s.dim() != 0:
            if s.dim() != 1 or x.dim() < 3 or s.shape[0] != x.shape[0]:
                raise ValueError(
                    f"sigma must be a scalar or have shape (batch,) = ({x.shape[0]},) for x of shape "
                    f"{tuple(x.shape)} (a per-sample sigma needs x with at least 3 dimensions), got {tuple(s.shape)}"
                )
            if s.numel() > 0 and not s.requires_grad and bool((s == s[0]).all()):
                # One sigma for the whole batch (every sampling step): one pair of matrices, one large product.
                s = s[0]
        if s.dim() == 0:
            a_h, a_w = self.matrix(h, s), self.matrix(w, s)
            return (a_h @ x.to(cdt) @ a_w.transpose(-1, -2)).to(x.dtype)
        view = (s.shape[0],) + (1,) * (x.dim() - 3)
        a_h = self.matrix(h, s).reshape(view + (h, h))
        a_w = self.matrix(w, s).reshape(view + (w, w))
        return (a_h @ x.to(cdt) @ a_w.transpose(-1, -2)).to(x.dtype)

    __call__ = apply

    @staticmethod
    def matrix(n: int, sigma: torch.Tensor) -> torch.Tensor:
        """The 1-D blur matrix ``D^T diag(g(sigma)) D`` (reflective boundaries) for each entry of ``sigma``.

        Args:
            n (`int`): signal length.
            sigma (`torch.Tensor` of any shape): floating-point blur standard deviations (not checked here).

        Returns:
            `torch.Tensor` of shape ``sigma.shape + (n, n)``, symmetric.
        """
        d = dct_matrix(n, sigma.dtype, sigma.device)
        return (d.T * _axis_response(n, sigma).unsqueeze(-2)) @ d

    @staticmethod
    def response(sigma: float | torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
        """Per-frequency multipliers; see :func:`blur_response`."""
        return blur_response(sigma, size)


GaussianBlur = DCTBlur
"""Alias of :class:`DCTBlur`."""


# ---- the schedule -----------------------------------------------------------------------------------
def _as_levels(values: object, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        if not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
        t = values.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(values, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise TypeError(f"{name} must be a sequence of numbers")
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    else:
        raise TypeError(f"{name} must be a 1-D tensor or a list of numbers, got {type(values).__name__}")
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 levels, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def _check_number(name: str, value: object, *, positive: bool = True, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (positive and (v < 0 or (v == 0 and not allow_zero))):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


class CorruptionSchedule:
    """Blur and noise levels of Soft Diffusion as functions of time ``t`` in ``[0, 1]``.

    The schedule is a table of ``K`` levels at ``t_i = i / (K - 1)``, linearly interpolated in between;
    ``t = 0`` is the least and ``t = 1`` the most corrupted level. Both ``blur_sigma`` and ``noise_std`` must
    be non-decreasing and ``noise_std > 0`` (the score ``(C_t E[x_0 | x_t] - x_t) / s_t^2`` and the momentum
    sampler's ``sqrt(s_t^2 - s_{t'}^2)`` need a positive, shrinking noise when walking back in time).

    Args:
        blur_sigmas (1-D `torch.Tensor` or list of `float`): blur standard deviations in pixels, >= 0.
        noise_stds (1-D `torch.Tensor` or list of `float`): noise standard deviations, > 0, same length.
        image_size (`int` or `(H, W)`, optional): the image size the levels were designed for. When set,
            :meth:`corrupt`, :meth:`blur` and the samplers refuse images of another size (a schedule whose
            largest blur is about the image size would not reduce bigger images to a flat colour, and would
            waste most levels on smaller ones).

    Use :meth:`default` for the paper-style schedule and :func:`fit_wasserstein_schedule` for levels fitted
    to data.
    """

    def __init__(
        self,
        blur_sigmas: torch.Tensor | Sequence[float],
        noise_stds: torch.Tensor | Sequence[float],
        *,
        image_size: int | Sequence[int] | None = None,
    ) -> None:
        blur = _as_levels(blur_sigmas, "blur_sigmas")
        noise = _as_levels(noise_stds, "noise_stds")
        if blur.shape != noise.shape:
            raise ValueError(
                f"blur_sigmas and noise_stds must have the same length, got {blur.numel()} and {noise.numel()}"
            )
        if bool((blur < 0).any()):
            raise ValueError(f"blur_sigmas must be >= 0, got a minimum of {blur.min().item()}")
        if bool((noise <= 0).any()):
            raise ValueError(
                f"noise_stds must be > 0 (noise levels <= 0 are not allowed), got a minimum of {noise.min().item()}"
            )
        for name, levels in (("blur_sigmas", blur), ("noise_stds", noise)):
            drops = torch.nonzero(levels[1:] < levels[:-1]).flatten()
            if len(drops):
                i = int(drops[0])
                raise ValueError(
                    f"{name} must be non-decreasing in t (monotone schedule), but level {i + 1} "
                    f"({levels[i + 1].item():.6g}) is below level {i} ({levels[i].item():.6g})"
                )
        if bool((blur[-1] == blur[0]) & (noise[-1] == noise[0])):
            raise ValueError("the schedule is constant: blur_sigmas or noise_stds must increase somewhere")
        self._blur = blur
        self._noise = noise
        self.image_size = None if image_size is None else _as_size(image_size, "image_size")
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self.blur_op = DCTBlur()

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def default(
        cls,
        image_size: int | Sequence[int],
        *,
        blur_sigma_min: float = 0.5,
        blur_sigma_max: float | None = None,
        noise_min: float = 0.01,
        noise_max: float = 0.1,
        num_levels: int = 1000,
    ) -> CorruptionSchedule:
        """Paper-style schedule: blur geometric from ``blur_sigma_min`` to ``blur_sigma_max``, noise linear.

        With ``blur_sigma_max`` equal to the image size (the default), the lowest non-constant DCT
        frequency keeps ``exp(-pi^2 / 2) < 0.8 %`` of its amplitude at ``t = 1``: the most corrupted level
        is a flat image per channel plus noise. The small noise (0.01 to 0.1, for data in ``[-1, 1]``)
        keeps the score finite and makes the sampler stochastic; the blur does the "destroying".

        Args:
            image_size (`int` or `(H, W)`): image size in pixels.
            blur_sigma_min (`float`, defaults to 0.5): blur at ``t = 0`` (> 0; the geometric spacing needs it).
            blur_sigma_max (`float`, optional): blur at ``t = 1``; defaults to ``max(H, W)``.
            noise_min (`float`, defaults to 0.01): noise at ``t = 0``, > 0.
            noise_max (`float`, defaults to 0.1): noise at ``t = 1``, >= ``noise_min``.
            num_levels (`int`, defaults to 1000): table size (the interpolation error of the geometric blur
                is below 1e-5 relative at 1000 levels).

        Returns:
            :class:`CorruptionSchedule`.
        """
        h, w = _as_size(image_size, "image_size")
        lo = _check_number("blur_sigma_min", blur_sigma_min)
        hi = float(max(h, w)) if blur_sigma_max is None else _check_number("blur_sigma_max", blur_sigma_max)
        n_lo = _check_number("noise_min", noise_min)
        n_hi = _check_number("noise_max", noise_max)
        if hi < lo:
            raise ValueError(f"blur_sigma_max ({hi}) must be >= blur_sigma_min ({lo})")
        if n_hi < n_lo:
            raise ValueError(f"noise_max ({n_hi}) must be >= noise_min ({n_lo})")
        if not isinstance(num_levels, int) or isinstance(num_levels, bool) or num_levels < 2:
            raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
        u = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float64)
        blur = lo * (hi / lo) ** u
        noise = n_lo + (n_hi - n_lo) * u
        return cls(blur, noise, image_size=(h, w))

    # ---- levels ---------------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        """Number of tabulated levels ``K``."""
        return self._blur.numel()

    @property
    def blur_sigmas(self) -> torch.Tensor:
        """The tabulated blur levels (float64, CPU; a copy)."""
        return self._blur.clone()

    @property
    def noise_stds(self) -> torch.Tensor:
        """The tabulated noise levels (float64, CPU; a copy)."""
        return self._noise.clone()

    def _table(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = (
                self._blur.to(device=device, dtype=dtype),
                self._noise.to(device=device, dtype=dtype),
            )
        return self._tables[key]

    def check_time(self, t: object, x: torch.Tensor | None = None) -> torch.Tensor:
        """Validate ``t`` (floating tensor of shape ``(batch,)`` with values in ``[0, 1]``) and return it."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a torch.Tensor of shape (batch,), got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"t must have shape (batch,), got {tuple(t.shape)}")
        if x is not None and (x.dim() < 3 or t.shape[0] != x.shape[0]):
            raise ValueError(
                f"t must have shape ({x.shape[0]},) to match images of shape {tuple(x.shape)}, got {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()) or bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"t must lie in [0, 1], got values from {t.min().item()} to {t.max().item()}")
        return t

    def _interp(self, t: torch.Tensor, which: int) -> torch.Tensor:
        self.check_time(t)
        table = self._table(t.device, torch.float64)[which]
        pos = t.detach().to(torch.float64) * (self.num_levels - 1)
        lo = pos.floor().clamp(0, self.num_levels - 2).long()
        frac = pos - lo
        return ((1 - frac) * table[lo] + frac * table[lo + 1]).to(t.dtype)

    def blur_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Blur standard deviation (pixels) at times ``t`` (shape ``(batch,)``); same shape, dtype and device."""
        return self._interp(t, 0)

    def noise_std(self, t: torch.Tensor) -> torch.Tensor:
        """Noise standard deviation at times ``t`` (shape ``(batch,)``); same shape, dtype and device."""
        return self._interp(t, 1)

    def levels(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(blur_sigma(t), noise_std(t))``."""
        return self.blur_sigma(t), self.noise_std(t)

    def max_blur_residual(self) -> float:
        """Largest multiplier of a non-constant DCT frequency at ``t = 1`` (needs ``image_size``).

        Small values (the default schedule gives < 0.008) mean the most corrupted level is a flat image per
        channel plus noise, so a sampling loop can start from the data's mean colour distribution.
        """
        if self.image_size is None:
            raise ValueError("max_blur_residual needs the schedule's image_size")
        n = max(self.image_size)
        return math.exp(-0.5 * (math.pi / n) ** 2 * float(self._blur[-1]) ** 2) if n > 1 else 0.0

    # ---- applying it ----------------------------------------------------------------------------------
    def check_images(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate a batch of images ``(batch, channels, H, W)`` against the schedule's image size."""
        _check_image(x, name)
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, channels, height, width), got {tuple(x.shape)}")
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            h, w = self.image_size
            size = f"{x.shape[-2]}x{x.shape[-1]}"
            relation = "smaller than" if x.shape[-2] * x.shape[-1] < h * w else "different from"
            raise ValueError(
                f"{name} has images of {size} px, {relation} the {h}x{w} px this schedule's blur levels "
                f"(up to sigma = {float(self._blur[-1]):.4g} px) were built for; build a schedule for {size}"
            )
        return x

    def blur(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``C_t x``: blur each image ``x[i]`` by ``blur_sigma(t[i])``.

        Args:
            x (`torch.Tensor` of shape `(batch, channels, H, W)`): images.
            t (`torch.Tensor` of shape `(batch,)`): times in ``[0, 1]``.

        Returns:
            `torch.Tensor` like ``x``.
        """
        self.check_images(x)
        self.check_time(t, x)
        return self.blur_op.apply(x, self.blur_sigma(t.to(x.device)))

    def corrupt(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """``x_t = C_t x_0 + s_t * noise``.

        Args:
            x0 (`torch.Tensor` of shape `(batch, channels, H, W)`): clean images.
            t (`torch.Tensor` of shape `(batch,)`): times in ``[0, 1]``.
            noise (`torch.Tensor` like ``x0``, optional): standard-normal noise; drawn with ``generator``
                when omitted.
            generator (`torch.Generator` or a list of them, optional): noise source.

        Returns:
            `torch.Tensor` like ``x0``.
        """
        self.check_images(x0, "x0")
        self.check_time(t, x0)
        if noise is None:
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected x0's {tuple(x0.shape)}")
        t = t.to(x0.device)
        s = self.noise_std(t).to(x0.dtype).reshape((-1,) + (1,) * (x0.dim() - 1))
        return self.blur_op.apply(x0, self.blur_sigma(t)) + s * noise.to(x0.dtype)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_levels={self.num_levels}, blur_sigma={float(self._blur[0]):.4g}.."
            f"{float(self._blur[-1]):.4g}, noise_std={float(self._noise[0]):.4g}..{float(self._noise[-1]):.4g}, "
            f"image_size={self.image_size})"
        )


# ---- Wasserstein-2 spacing ----------------------------------------------------------------------------
@dataclass
class FrequencyStatistics:
    """Per-DCT-frequency mean and variance of a data set: a Gaussian model diagonal in the DCT basis.

    Args:
        mean (`torch.Tensor` of shape `(channels, H, W)`): mean of each DCT-II coefficient.
        var (`torch.Tensor` of shape `(channels, H, W)`): variance of each coefficient, >= 0.
    """

    mean: torch.Tensor
    var: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("mean", "var"):
            v = getattr(self, name)
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                raise TypeError(f"{name} must be a floating-point torch.Tensor")
            if v.dim() != 3:
                raise ValueError(f"{name} must have shape (channels, H, W), got {tuple(v.shape)}")
        if self.mean.shape != self.var.shape:
            raise ValueError(f"mean {tuple(self.mean.shape)} and var {tuple(self.var.shape)} must have the same shape")
        if bool((self.var < 0).any()):
            raise ValueError("var must be >= 0")

    @classmethod
    def from_images(cls, images: torch.Tensor) -> FrequencyStatistics:
        """Estimate the statistics from a batch of images ``(batch, channels, H, W)`` (batch >= 2)."""
        _check_image(images, "images")
        if images.dim() != 4 or images.shape[0] < 2:
            raise ValueError(f"images must have shape (batch >= 2, channels, H, W), got {tuple(images.shape)}")
        coeffs = dct2(images.detach().to(torch.float64))
        return cls(mean=coeffs.mean(0), var=coeffs.var(0, unbiased=False))

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.mean.shape[-2]), int(self.mean.shape[-1])


def gaussian_w2(
    stats: FrequencyStatistics,
    blur_a: torch.Tensor | float,
    noise_a: torch.Tensor | float,
    blur_b: torch.Tensor | float,
    noise_b: torch.Tensor | float,
) -> torch.Tensor:
    """Wasserstein-2 distance between two corrupted versions of the Gaussian data model ``stats``.

    With the data coefficient ``X_k ~ N(m_k, v_k)`` and blur multiplier ``r_k``, the corrupted coefficient is
    ``N(r_k m_k, r_k^2 v_k + s^2)``, independent across frequencies; between two such diagonal Gaussians
    ``W2^2 = sum_k (r_k - r'_k)^2 m_k^2 + (sqrt(r_k^2 v_k + s^2) - sqrt(r'_k^2 v_k + s'^2))^2``.

    Args:
        stats (:class:`FrequencyStatistics`): the data model.
        blur_a, noise_a, blur_b, noise_b (`float` or `torch.Tensor`, broadcastable): the two levels.

    Returns:
        `torch.Tensor` (float64) of the broadcast shape of the levels.
    """
    if not isinstance(stats, FrequencyStatistics):
        raise TypeError(f"stats must be a FrequencyStatistics, got {type(stats).__name__}")
    levels = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float64) for v in (blur_a, noise_a, blur_b, noise_b))
    )
    sa, na, sb, nb = (v.reshape(-1) for v in levels)
    if bool((na <= 0).any()) or bool((nb <= 0).any()):
        raise ValueError("noise levels must be > 0")
    out = _w2_terms(stats, sa, na, sb, nb)
    return out.reshape(levels[0].shape)


def _w2_terms(
    stats: FrequencyStatistics, sa: torch.Tensor, na: torch.Tensor, sb: torch.Tensor, nb: torch.Tensor
) -> torch.Tensor:
    size = stats.image_size
    m = stats.mean.to(torch.float64).unsqueeze(0)
    v = stats.var.to(torch.float64).unsqueeze(0)
    ra = blur_response(sa, size).unsqueeze(1)  # (levels, 1, H, W)
    rb = blur_response(sb, size).unsqueeze(1)
    sd_a = torch.sqrt(ra**2 * v + na.reshape(-1, 1, 1, 1) ** 2)
    sd_b = torch.sqrt(rb**2 * v + nb.reshape(-1, 1, 1, 1) ** 2)
    w2sq = ((ra - rb) ** 2 * m**2 + (sd_a - sd_b) ** 2).sum(dim=(1, 2, 3))
    return torch.sqrt(w2sq)


def fit_wasserstein_schedule(
    data: torch.Tensor | FrequencyStatistics,
    *,
    path: CorruptionSchedule | None = None,
    num_levels: int = 1000,
    num_candidates: int = 4096,
    **default_kwargs,
) -> CorruptionSchedule:
    """Re-space the levels of a schedule so that consecutive ones are equally far apart in W2 distance.

    The ``path`` fixes *which* (blur, noise) pairs are used, in order; this chooses *where* along it the
    ``num_levels`` levels sit. The path is sampled at ``num_candidates`` points, the W2 distance between
    neighbouring candidates (closed form, :func:`gaussian_w2`) is accumulated into an arc length, and the
    levels are placed at equal arc-length steps. Where the data has much energy (coarse structure removed
    by a blur step) the levels crowd; where little changes they thin out.

    Args:
        data (`torch.Tensor` of shape `(batch, channels, H, W)` or :class:`FrequencyStatistics`): a data batch
            (its per-frequency means and variances are estimated) or the statistics themselves.
        path (:class:`CorruptionSchedule`, optional): the levels to re-space; defaults to
            ``CorruptionSchedule.default(image_size, **default_kwargs)``.
        num_levels (`int`, defaults to 1000): levels of the fitted schedule.
        num_candidates (`int`, defaults to 4096): resolution of the arc-length integration.
        **default_kwargs: ``blur_sigma_min``, ``blur_sigma_max``, ``noise_min``, ``noise_max`` of the
            default path (only without ``path``).

    Returns:
        :class:`CorruptionSchedule` with the path's image size.
    """
    stats = data if isinstance(data, FrequencyStatistics) else FrequencyStatistics.from_images(data)
    if not isinstance(num_levels, int) or isinstance(num_levels, bool) or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
    if not isinstance(num_candidates, int) or isinstance(num_candidates, bool) or num_candidates < num_levels:
        raise ValueError(f"num_candidates must be an integer >= num_levels ({num_levels}), got {num_candidates!r}")
    if path is None:
        path = CorruptionSchedule.default(stats.image_size, **default_kwargs)
    elif default_kwargs:
        raise ValueError(f"pass either path or default-path arguments, not both (got {sorted(default_kwargs)})")
    elif not isinstance(path, CorruptionSchedule):
        raise TypeError(f"path must be a CorruptionSchedule, got {type(path).__name__}")
    if path.image_size is not None and path.image_size != stats.image_size:
        raise ValueError(f"the data's images are {stats.image_size} but path was built for {path.image_size}")

    u = torch.linspace(0.0, 1.0, num_candidates, dtype=torch.float64)
    blur, noise = path.levels(u)
    # Distances between neighbours (i, i + 1), in chunks to bound memory (levels x channels x H x W).
    chunks = []
    for i in range(0, num_candidates - 1, 256):
        j = min(i + 256, num_candidates - 1)
        chunks.append(_w2_terms(stats, blur[i:j], noise[i:j], blur[i + 1 : j + 1], noise[i + 1 : j + 1]))
    steps = torch.cat(chunks)
    arc = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])
    if not float(arc[-1]) > 0:
        raise ValueError("the path does not change the data distribution (zero W2 length); nothing to space")
    targets = torch.linspace(0.0, float(arc[-1]), num_levels, dtype=torch.float64)
    # Invert the (non-decreasing) arc length by linear interpolation between candidates.
    idx = torch.searchsorted(arc, targets, right=False).clamp(1, num_candidates - 1)
    a0, a1 = arc[idx - 1], arc[idx]
    frac = torch.where(a1 > a0, (targets - a0) / (a1 - a0), torch.zeros_like(targets))
    u_new = (u[idx - 1] + frac * (u[idx] - u[idx - 1])).clamp(0.0, 1.0)
    u_new[0], u_new[-1] = 0.0, 1.0
    blur_new, noise_new = path.levels(u_new)
    # Rounding can make neighbours differ by -1e-16; the path itself is monotone.
    return CorruptionSchedule(
        torch.cummax(blur_new, 0).values,
        torch.cummax(noise_new, 0).values,
        image_size=stats.image_size,
    )
