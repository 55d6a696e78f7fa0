"""The Gaussian SDE corruption ``x_t = m(t) x_0 + std(t) z`` as a :class:`~sde_diffusers.corruption.LinearCorruption`.

The coefficients come from the :class:`~sde_diffusers.sde.SDE` (``marginal_coeffs``, ``perturb``); nothing is
re-derived here. Training times are ``U(eps, T)`` (score_sde's ``eps = 1e-5`` keeps ``std(t) > 0`` for VP).
"""

from __future__ import annotations

import torch

from ..sde import SDE, broadcast_to
from ..validation import check_open_interval
from .base import LinearCorruption

__all__ = ["GaussianCorruption"]


class GaussianCorruption(LinearCorruption):
    """The perturbation kernel of a VE / VP / sub-VP SDE: ``C_t = m(t) I``, ``s_t = std(t)``.

    Args:
        sde (`SDE`): the forward process.
        eps (`float`, defaults to 1e-5): smallest training time, in ``(0, T)``.

    Example:
        >>> corruption = GaussianCorruption(VPSDE())
        >>> x_t = corruption.corrupt(x0, corruption.sample_time(len(x0)))
    """

    def __init__(self, sde: SDE, eps: float = 1e-5) -> None:
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an sde_diffusers.SDE (VESDE, VPSDE or SubVPSDE), got {type(sde).__name__}")
        self.sde = sde
        self.T = float(sde.T)
        self.t_min = check_open_interval("eps", eps, 0.0, self.T)

    def check_time(self, t: object, x: torch.Tensor | None = None) -> torch.Tensor:
        """Times ``(batch,)`` in ``[0, T]`` with a positive perturbation std (VP / sub-VP need ``t > 0``)."""
        self.sde.check_time(t, x)
        if not t.is_floating_point() or bool(((t < 0) | (t > self.T)).any()):
            raise ValueError(f"t must be floating-point times in [0, T] = [0, {self.T}]")
        if bool((self.sde.marginal_coeffs(t)[1] <= 0).any()):
            raise ValueError("t must give a positive perturbation std (VP / sub-VP need t > 0)")
        return t

    def _degrade(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return broadcast_to(self.sde.marginal_coeffs(t)[0], x) * x

    def _noise_std(self, t: torch.Tensor) -> torch.Tensor:
        return self.sde.marginal_coeffs(t)[1]

    def _corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.sde.perturb(x0, noise, t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sde!r}, eps={self.t_min:g})"
