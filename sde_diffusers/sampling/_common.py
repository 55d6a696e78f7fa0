"""What every step function shares: the output type, the score argument, noise, and the input checks.

The step contract (every step of :mod:`sde_diffusers.sampling`: predictors, correctors, probability-flow ODE steps,
Soft Diffusion steps) is

    ``step(process, estimate, x, t, t_next, *, noise=None, generator=None, **options) -> StepOutput``

* ``process``: the forward :class:`~sde_diffusers.sde.SDE` (a Soft Diffusion corruption for the soft steps);
* ``estimate``: what the model said at ``(x, t)``: the score tensor (``x0_hat`` for the soft steps). A
  ``score_fn(x, t)`` callable is accepted as well (called once, at ``(x, t)``), so older calls keep working;
* ``x`` of shape ``(batch, ...)`` at times ``t`` of shape ``(batch,)``;
* ``t_next`` of shape ``(batch,)``, ``t_next <= t``: where the step goes, on any grid (uniform, Karras, ...);
* ``noise``: a standard-normal draw shaped like ``x`` that replays a run; otherwise one is drawn with
  ``generator`` (a list gives one generator per sample).

The result :class:`StepOutput` unpacks as ``(prev_sample, prev_sample_mean)`` and carries ``noise_std``, the
per-sample standard deviation of the Gaussian noise the step added (``prev_sample = prev_sample_mean + noise_std *
z``): the step's transition density is ``N(prev_sample_mean, noise_std^2 I)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..sde import SDE, ScoreFn
from ..validation import check_int, check_open_interval

__all__ = [
    "StepOutput",
    "SamplerOutput",
    "checked_score",
    "check_time_span",
    "resolve_score",
    "standard_normal_like",
    "check_state",
    "check_step",
    "per_sample_norm",
]

Estimate = torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepOutput(tuple):
    """One step's result: unpacks as ``(prev_sample, prev_sample_mean)``, plus ``noise_std``.

    Args:
        prev_sample (`torch.Tensor`): the sample after the step.
        prev_sample_mean (`torch.Tensor`): the step without its noise injection.
        noise_std (`torch.Tensor` of shape `(batch,)`): standard deviation of the injected noise (zeros for a
            deterministic step).
    """

    noise_std: torch.Tensor

    def __new__(cls, prev_sample: torch.Tensor, prev_sample_mean: torch.Tensor, noise_std: torch.Tensor) -> StepOutput:
        out = super().__new__(cls, (prev_sample, prev_sample_mean))
        out.noise_std = noise_std
        return out

    @property
    def prev_sample(self) -> torch.Tensor:
        return self[0]

    @property
    def prev_sample_mean(self) -> torch.Tensor:
        return self[1]

    @classmethod
    def deterministic(cls, x: torch.Tensor) -> StepOutput:
        """A step that added no noise."""
        return cls(x, x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))


@dataclass
class SamplerOutput(BaseOutput):
    """Result of a sampler or of an encode/decode through the ODE.

    Args:
        sample (`torch.Tensor`): the final samples.
        nfe (`int`): number of batched network evaluations used.
        nfe_per_sample (`torch.Tensor` of shape `(batch,)`, optional): evaluations each sample needed on its own.
    """

    sample: torch.Tensor
    nfe: int
    nfe_per_sample: torch.Tensor | None = None


def checked_score(score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``score_fn(x, t)``, raising ``ValueError`` unless it is a tensor shaped like ``x`` (a score model's output)."""
    score = score_fn(x, t)
    if not isinstance(score, torch.Tensor) or score.shape != x.shape:
        got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(f"the score model returned {got} for an input of shape {tuple(x.shape)}; they must match")
    return score


def check_time_span(sde: SDE, eps: float) -> float:
    """``eps`` (the end time of sampling / start of the likelihood ODE) as a float in ``(0, T)``."""
    return check_open_interval("eps", eps, 0.0, sde.T)


def resolve_score(score: Estimate, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The score tensor at ``(x, t)``: ``score`` itself, or ``score(x, t)`` for a callable."""
    if isinstance(score, torch.Tensor):
        if score.shape != x.shape:
            raise ValueError(f"score has shape {tuple(score.shape)}, expected the sample's {tuple(x.shape)}")
        return score
    if not callable(score):
        raise TypeError(f"score must be a tensor or a score_fn(x, t) callable, got {type(score).__name__}")
    return score(x, t)


def standard_normal_like(
    x: torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Return ``noise`` (checked) or a fresh standard-normal draw shaped like ``x``.

    A list of generators gives one per sample, so each sample is reproducible on its own.
    """
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        if noise.shape != x.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected the sample's {tuple(x.shape)}")
        return noise.to(device=x.device, dtype=x.dtype)
    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def check_state(x: torch.Tensor, t: torch.Tensor) -> None:
    """Validate a sample and its per-sample times before any work starts."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (batch,), got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {tuple(t.shape)}")


def check_step(x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor | None, num_steps: int | None) -> None:
    """Validate a step's inputs: the state, ``t_next`` like ``t``, and not both ``t_next`` and ``num_steps``."""
    check_state(x, t)
    if t_next is not None:
        if num_steps is not None:
            raise ValueError("pass t_next (a step to that time) or num_steps (a step of the uniform grid), not both")
        if not isinstance(t_next, torch.Tensor) or t_next.shape != t.shape:
            got = tuple(t_next.shape) if isinstance(t_next, torch.Tensor) else type(t_next).__name__
            raise ValueError(f"t_next must be a tensor of shape {tuple(t.shape)} like t, got {got}")
    elif num_steps is not None:
        check_int("num_steps", num_steps)


def per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample (shape ``(batch,)``)."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1)
