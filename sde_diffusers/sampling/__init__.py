"""Pure sampling step functions: predictors, correctors and ODE steps (no state, no network calls)."""

from .adaptive_sde import adaptive_sde_step, sample_adaptive_sde
from .correctors import CORRECTORS, annealed_langevin_step, langevin_step
from .ode import (
    ode_euler_step,
    ode_heun_step,
    odeint,
    sample_probability_flow,
    sample_probability_flow_fixed,
    solve_probability_flow,
)
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
    "odeint",
    "ode_euler_step",
    "ode_heun_step",
    "sample_probability_flow",
    "sample_probability_flow_fixed",
    "solve_probability_flow",
    "adaptive_sde_step",
    "sample_adaptive_sde",
]
