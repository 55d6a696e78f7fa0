"""Corruptions ``x_t = C_t x_0 + s_t z``: the strategy that the losses, the trainer and the schedulers share.

* :mod:`.base`: :class:`LinearCorruption`, the strategy (``C_t``, ``s_t``, the corruption, training times).
* :mod:`.gaussian`: :class:`GaussianCorruption`, the perturbation kernel of a VE / VP / sub-VP SDE.
* :mod:`.blur`: Soft Diffusion's DCT Gaussian blur (:class:`DCTBlur`) and :class:`CorruptionSchedule`, its
  blur + noise levels over time (Daras et al. 2022).
* :mod:`.wasserstein`: fitting a schedule's levels to data (equal Wasserstein-2 steps).

A third corruption is one new module with a :class:`LinearCorruption` subclass.
"""

from .base import LinearCorruption, as_corruption
from .blur import CorruptionSchedule, DCTBlur, GaussianBlur, blur_response, dct2, dct_matrix, idct2
from .gaussian import GaussianCorruption
from .wasserstein import FrequencyStatistics, fit_wasserstein_schedule, gaussian_w2

__all__ = [
    "LinearCorruption",
    "as_corruption",
    "GaussianCorruption",
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
