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
  It is the :class:`~sde_diffusers.corruption.LinearCorruption` strategy of Soft Diffusion.

:mod:`~sde_diffusers.corruption.wasserstein` fits the levels to data.

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

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..validation import check_int, check_positive
from .base import LinearCorruption

__all__ = ["DCTBlur", "GaussianBlur", "CorruptionSchedule", "dct_matrix", "dct2", "idct2", "blur_response"]

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
    check_int("n", n, 1)
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
        s = _as_sigma(sigma, _compute_dtype(x.dtype), x.device)
        if s.dim() != 0 and (s.dim() != 1 or x.dim() < 3 or s.shape[0] != x.shape[0]):
            raise ValueError(
                f"sigma must be a scalar or have shape (batch,) = ({x.shape[0]},) for x of shape "
                f"{tuple(x.shape)} (a per-sample sigma needs x with at least 3 dimensions), got {tuple(s.shape)}"
            )
        return self._apply(x, s)

    __call__ = apply

    def _apply(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` for validated ``x`` and ``s`` (a 0-d or ``(batch,)`` tensor of blur levels)."""
        cdt = _compute_dtype(x.dtype)
        s = s.to(device=x.device, dtype=cdt)
        h, w = x.shape[-2], x.shape[-1]
        if s.dim() != 0:
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


class CorruptionSchedule(LinearCorruption):
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
        lo = check_positive("blur_sigma_min", blur_sigma_min)
        hi = float(max(h, w)) if blur_sigma_max is None else check_positive("blur_sigma_max", blur_sigma_max)
        n_lo = check_positive("noise_min", noise_min)
        n_hi = check_positive("noise_max", noise_max)
        if hi < lo:
            raise ValueError(f"blur_sigma_max ({hi}) must be >= blur_sigma_min ({lo})")
        if n_hi < n_lo:
            raise ValueError(f"noise_max ({n_hi}) must be >= noise_min ({n_lo})")
        check_int("num_levels", num_levels, 2)
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

    def _interp(self, t: torch.Tensor, which: int) -> torch.Tensor:
        table = self._table(t.device, torch.float64)[which]
        pos = t.detach().to(torch.float64) * (self.num_levels - 1)
        lo = pos.floor().clamp(0, self.num_levels - 2).long()
        frac = pos - lo
        return ((1 - frac) * table[lo] + frac * table[lo + 1]).to(t.dtype)

    def _noise_std(self, t: torch.Tensor) -> torch.Tensor:
        return self._interp(t, 1)

    def _degrade(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.blur_op._apply(x, self._interp(t, 0))

    def blur_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Blur standard deviation (pixels) at times ``t`` (shape ``(batch,)``); same shape, dtype and device."""
        return self._interp(self.check_time(t), 0)

    def noise_std(self, t: torch.Tensor) -> torch.Tensor:
        """Noise standard deviation at times ``t`` (shape ``(batch,)``); same shape, dtype and device."""
        return self._interp(self.check_time(t), 1)

    def levels(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(blur_sigma(t), noise_std(t))``."""
        self.check_time(t)
        return self._interp(t, 0), self._interp(t, 1)

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
        super().check_images(x, name)
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
        return self.degrade(x, t)

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
        if noise is None and isinstance(generator, list):  # one generator per image, as Diffusers' pipelines pass
            self.check_images(x0, "x0")
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return super().corrupt(x0, t, noise, generator=generator)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_levels={self.num_levels}, blur_sigma={float(self._blur[0]):.4g}.."
            f"{float(self._blur[-1]):.4g}, noise_std={float(self._noise[0]):.4g}..{float(self._noise[-1]):.4g}, "
            f"image_size={self.image_size})"
        )
