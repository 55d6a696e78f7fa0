"""Pure sampling step functions: predictors, correctors and ODE steps (no state, no network calls)."""

from .correctors import CORRECTORS, annealed_langevin_step, langevin_step
from .predictors import PREDICTORS, ancestral_sampling_step, euler_maruyama_step, reverse_diffusion_step
from .soft import SOFT_SAMPLERS, soft_deterministic_step, soft_momentum_step, soft_naive_step

__all__ = [
    "PREDICTORS",
    "CORRECTORS",
    "euler_maruyama_step",
    "reverse_diffusion_step",
    "ancestral_sampling_step",
    "langevin_step",
    "annealed_langevin_step",
    "SOFT_SAMPLERS",
    "soft_momentum_step",
    "soft_naive_step",
    "soft_deterministic_step",
]
