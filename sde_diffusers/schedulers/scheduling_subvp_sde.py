"""Predictor–corrector scheduler for the sub-VP SDE."""

from __future__ import annotations

from ..sde import SubVPSDE
from .scheduling_vp_sde import VPSDEScheduler


class SubVPSDEScheduler(VPSDEScheduler):
    """Predictor–corrector sampler of the sub-VP SDE.

    Same config, conventions and DDPM compatibility as :class:`VPSDEScheduler` (the two SDEs share the
    linear beta schedule and the ``t * (N - 1)`` timestep scale); only the forward process differs.
    Ancestral sampling uses the exact Gaussian posterior of the sub-VP transition kernel, and the Langevin
    corrector's ``alpha`` is ``1 - beta_i`` as for VP (the reference implementation defines neither).
    """

    _sde_class = SubVPSDE
