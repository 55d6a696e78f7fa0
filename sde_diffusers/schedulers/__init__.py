"""Diffusers-facing schedulers: thin adapters over the SDEs and the step functions."""

from .scheduling_probability_flow import ProbabilityFlowScheduler
from .scheduling_sde_common import SDESchedulerBase, SDESchedulerMixin, SDESchedulerOutput
from .scheduling_soft_diffusion import SoftDiffusionScheduler, SoftDiffusionSchedulerOutput
from .scheduling_subvp_sde import SubVPSDEScheduler
from .scheduling_ve_sde import VESDEScheduler
from .scheduling_vp_sde import VPSDEScheduler

__all__ = [
    "SDESchedulerBase",
    "SDESchedulerMixin",
    "SDESchedulerOutput",
    "VESDEScheduler",
    "VPSDEScheduler",
    "SubVPSDEScheduler",
    "SoftDiffusionScheduler",
    "SoftDiffusionSchedulerOutput",
    "ProbabilityFlowScheduler",
]
