"""Levels of a blur + noise schedule spaced evenly in Wasserstein-2 distance (Soft Diffusion's schedule fit).

:func:`fit_wasserstein_schedule` re-spaces the levels of a :class:`~sde_diffusers.corruption.CorruptionSchedule`
so that consecutive corrupted distributions are equally far apart in Wasserstein-2 distance, treating the data as a
Gaussian that is independent across DCT frequencies (statistics from a data batch, :class:`FrequencyStatistics`);
for such Gaussians the distance has a closed form per frequency (:func:`gaussian_w2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_int
from .blur import CorruptionSchedule, _check_image, blur_response, dct2

__all__ = ["FrequencyStatistics", "gaussian_w2", "fit_wasserstein_schedule"]


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
    check_int("num_levels", num_levels, 2)
    check_int("num_candidates", num_candidates, num_levels)
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
