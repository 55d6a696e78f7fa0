"""Pure sampling step functions: predictors, correctors and ODE steps (no state, no network calls).

Every step follows one contract, from ``t`` to ``t_next`` on any grid (see :mod:`sde_diffusers.sampling._common`):
``step(sde, score, x, t, t_next, ...) -> StepOutput``, which unpacks as ``(prev_sample, prev_sample_mean)`` and
carries the per-sample ``noise_std`` of the step's Gaussian transition. The generic batched ODE solver lives in
:mod:`sde_diffusers.sampling.solver`.
"""

from ._common import SamplerOutput, StepOutput
from .adaptive_sde import adaptive_sde_step, sample_adaptive_sde
from .correctors import CORRECTOR_KERNELS, CORRECTORS, annealed_langevin_step, langevin_step
from .ode import (
    ode_euler_step,
    ode_heun_step,
    probability_flow_euler_step,
    probability_flow_heun_step,
    sample_probability_flow,
    sample_probability_flow_fixed,
    solve_probability_flow,
    time_grid,
)
from .predictors import (
    PREDICTOR_KERNELS,
    PREDICTORS,
    ancestral_sampling_step,
    euler_maruyama_step,
    reverse_diffusion_step,
)
from .soft import SOFT_SAMPLERS, soft_deterministic_step, soft_momentum_step, soft_naive_step
from .solver import odeint

__all__ = [
    "StepOutput",
    "SamplerOutput",
    "PREDICTORS",
    "CORRECTORS",
    "PREDICTOR_KERNELS",
    "CORRECTOR_KERNELS",
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
    "time_grid",
    "ode_euler_step",
    "ode_heun_step",
    "probability_flow_euler_step",
    "probability_flow_heun_step",
    "sample_probability_flow",
    "sample_probability_flow_fixed",
    "solve_probability_flow",
    "adaptive_sde_step",
    "sample_adaptive_sde",
]
