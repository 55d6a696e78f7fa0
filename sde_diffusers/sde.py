"""Forward SDEs of Song et al. (2021): VE, VP and sub-VP.

Every formula about a corruption process lives here: drift, diffusion, perturbation kernel, prior,
discretisation, reverse-time SDE and probability-flow ODE. Schedulers, losses, samplers and the
likelihood code ask an :class:`SDE` object; none of them re-derives ``alpha_bar`` or ``sigma``.

Conventions follow the reference implementation (``score_sde/sde_lib.py``):

* ``t`` is a tensor of shape ``(batch,)`` in ``[eps, T]`` with ``T = 1``;
* VE: ``std(t) = sigma_min * (sigma_max / sigma_min) ** t``; discrete sigmas are log-spaced over ``N`` levels;
* VP: ``beta(t) = beta_min + t * (beta_max - beta_min)``; discrete betas ``beta(i / (N - 1)) / N``;
* sub-VP: ``std(t) = 1 - exp(-int_0^t beta)`` (no square root);
* discrete index ``floor(t * (N - 1) / T)``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch

from .validation import check_int, check_positive

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "ReverseSDE",
    "ScoreFn",
    "get_sde",
    "broadcast_to",
    "reverse_coefficients",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def broadcast_to(coeff: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape ``(batch,)`` so that it broadcasts against ``x``."""
    return coeff.reshape(coeff.shape + (1,) * (x.dim() - coeff.dim()))


def reverse_coefficients(
    f: torch.Tensor, g: torch.Tensor, score: torch.Tensor, probability_flow: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse-time drift ``f - g^2 score`` and diffusion ``g`` (the probability-flow ODE: ``f - g^2 score / 2``
    and 0), from a forward drift ``f`` (shape of ``score``) and diffusion ``g`` (shape ``(batch,)``)."""
    drift = f - broadcast_to(g**2, score) * score * (0.5 if probability_flow else 1.0)
    return drift, (torch.zeros_like(g) if probability_flow else g)


class SDE(abc.ABC):
    """A linear forward SDE ``dx = f(t) x dt + g(t) dw`` with Gaussian perturbation kernels.

    Subclasses implement :meth:`sde`, :meth:`marginal_coeffs`, :meth:`prior_sampling` and
    :meth:`prior_logp`; everything else is derived from those.

    Args:
        N (`int`): number of discretisation steps of the reference sampler.
    """

    def __init__(self, N: int) -> None:
        self.N = check_int("N", N)

    @property
    def T(self) -> float:
        """End time of the forward process."""
        return 1.0

    # ---- the primitives ---------------------------------------------------------------------------
    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` (shape of ``x``) and diffusion ``g(t)`` (shape ``(batch,)``)."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean coefficient ``m(t)`` and standard deviation ``s(t)`` of ``p_t(x | x_0) = N(m x_0, s^2 I)``."""

    @abc.abstractmethod
    def prior_sampling(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, **tensor_kwargs
    ) -> torch.Tensor:
        """Draw from the prior ``p_T``."""

    @abc.abstractmethod
    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior, one value per sample (shape ``(batch,)``)."""

    # ---- derived quantities -----------------------------------------------------------------------
    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (shape of ``x``) and std (shape ``(batch,)``) of ``p_t(x_t | x_0 = x)``."""
        self.check_time(t, x)
        mean_coeff, std = self.marginal_coeffs(t)
        return broadcast_to(mean_coeff, x) * x, std

    def perturb(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample ``x_t = m(t) x_0 + s(t) noise``."""
        mean, std = self.marginal_prob(x0, t)
        return mean + broadcast_to(std, x0) * noise

    def transition_coeffs(self, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients ``(a, v)`` of the forward transition ``p(x_t | x_s) = N(a x_s, v I)`` for ``s <= t``.

        Exact for any linear SDE: ``a = m(t) / m(s)`` and ``v = s(t)^2 - a^2 s(s)^2``.
        """
        m_t, std_t = self.marginal_coeffs(t)
        m_s, std_s = self.marginal_coeffs(s)
        a = m_t / m_s
        return a, (std_t**2 - a**2 * std_s**2).clamp_min(0.0)

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``p_T`` (``sigma_max`` for VE, 1 for VP and sub-VP)."""
        return 1.0

    def discrete_index(self, t: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        """Index ``floor(t * (n - 1) / T)`` into an ``n``-level grid (``n = N`` by default).

        The product is formed in float64 with a margin of two float32 rounding units (or of ``t``'s dtype, if
        coarser), so a grid time ``k / (n - 1)`` that went through float32 gives ``k``, not ``k - 1``.
        """
        n = self.N if num_steps is None else num_steps
        unit = max(torch.finfo(t.dtype).eps, torch.finfo(torch.float32).eps) if t.is_floating_point() else 0.0
        margin = 2 * unit * (n - 1)
        return torch.floor(t.double() * (n - 1) / self.T + margin).long().clamp(0, n - 1)

    def discretize(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        num_steps: int | None = None,
        t_prev: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of a discrete forward chain, ``x_t = x_prev + f + G z``, written at its end ``t``.

        * With ``t_prev`` (shape ``(batch,)``, ``t_prev <= t``): the exact transition of the SDE over
          ``[t_prev, t]``, ``f = (a - 1) x`` and ``G = sqrt(v)`` with ``(a, v)`` from :meth:`transition_coeffs`.
          It is valid on any grid (uniform, Karras, ...).
        * Otherwise the reference chain of an ``n``-level uniform grid (``n = num_steps``, default ``N``):
          Euler–Maruyama with ``dt = T / n`` here; VE and VP override it with the SMLD and DDPM chains.

        Returns:
            ``(f, G)``: ``f`` of the shape of ``x``, ``G`` of shape ``(batch,)``.
        """
        self.check_time(t, x)
        if t_prev is not None:
            a, v = self.transition_coeffs(t, t_prev)
            return broadcast_to(a - 1.0, x) * x, torch.sqrt(v)
        dt = self.T / (self.N if num_steps is None else num_steps)
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def langevin_alpha(
        self, t: torch.Tensor, num_steps: int | None = None, t_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ``alpha`` factor of the Langevin step size (1 for VE, ``1 - beta_i`` for VP-type SDEs)."""
        return torch.ones_like(t)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or, with ``probability_flow=True``, the probability-flow ODE)."""
        return ReverseSDE(self, score_fn, probability_flow)

    def check_time(self, t: torch.Tensor, x: torch.Tensor | None = None) -> None:
        """Raise if ``t`` is not a tensor of shape ``(batch,)`` matching ``x``."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a torch.Tensor of shape (batch,), got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"t must have shape (batch,), got shape {tuple(t.shape)}")
        if x is not None and x.shape[0] != t.shape[0]:
            raise ValueError(f"t has {t.shape[0]} entries but x has batch size {x.shape[0]}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{type(self).__name__}({params})"

    @property
    def config(self) -> dict:
        """Constructor arguments (enough to rebuild the SDE)."""
        return {"N": self.N}

    @staticmethod
    def _gaussian_logp(z: torch.Tensor, std: float) -> torch.Tensor:
        dims = z[0].numel()
        flat = z.reshape(z.shape[0], -1)
        return -0.5 * dims * math.log(2 * math.pi * std**2) - flat.pow(2).sum(dim=1) / (2 * std**2)


class VESDE(SDE):
    """Variance-exploding SDE (SMLD / NCSN): ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw``.

    Args:
        sigma_min (`float`, defaults to 0.01): smallest noise level.
        sigma_max (`float`, defaults to 50.0): largest noise level (std of the prior).
        N (`int`, defaults to 1000): number of noise levels of the discrete chain.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        super().__init__(N)
        check_positive("sigma_min", sigma_min)
        check_positive("sigma_max", sigma_max)
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min})")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    @property
    def config(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level ``sigma_min (sigma_max / sigma_min)^t``."""
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma`."""
        return torch.log(sigma / self.sigma_min) / self._log_ratio

    def discrete_sigmas(self, num_steps: int | None = None, **tensor_kwargs) -> torch.Tensor:
        """The ``n`` log-spaced noise levels of the SMLD chain, increasing."""
        n = self.N if num_steps is None else num_steps
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), n, **tensor_kwargs))

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_time(t, x)
        return torch.zeros_like(x), self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(t), self.sigma(t)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def prior_sampling(self, shape, generator=None, **tensor_kwargs) -> torch.Tensor:
        return torch.randn(shape, generator=generator, **tensor_kwargs) * self.sigma_max

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        return self._gaussian_logp(z, self.sigma_max)

    def adjacent_sigmas(self, t: torch.Tensor, num_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sigma_i, sigma_{i-1})`` on the ``n``-level grid, with ``sigma_{-1} = 0``."""
        n = self.N if num_steps is None else num_steps
        idx = self.discrete_index(t, n)
        i = idx.to(t.dtype)
        sigma = self.sigma_min * torch.exp(i / max(n - 1, 1) * self._log_ratio)
        prev = self.sigma_min * torch.exp((i - 1) / max(n - 1, 1) * self._log_ratio)
        return sigma, torch.where(idx == 0, torch.zeros_like(prev), prev)

    def discretize(self, x, t, num_steps=None, t_prev=None):
        """SMLD chain: ``f = 0``, ``G = sqrt(sigma_i^2 - sigma_{i-1}^2)`` (exact over ``[t_prev, t]`` if given)."""
        self.check_time(t, x)
        if t_prev is not None:
            return super().discretize(x, t, t_prev=t_prev)
        sigma, prev = self.adjacent_sigmas(t, num_steps)
        return torch.zeros_like(x), torch.sqrt(sigma**2 - prev**2)

    def reversed_index(self, t: torch.Tensor) -> torch.Tensor:
        """Level ``round((T - t)(N - 1) / T)`` of the discrete SMLD chain counted from ``sigma_max`` (index 0), the
        label official discrete VE models (NCSN, ``continuous=False``) take; float, shape of ``t``."""
        return torch.round((self.T - t) * (self.N - 1) / self.T)

    def discrete_marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, sigma_j)`` of the SMLD level ``j`` = :meth:`reversed_index` nearest to ``t``."""
        level_t = self.T - self.reversed_index(t) * self.T / max(self.N - 1, 1)
        return torch.ones_like(t), self.sigma(level_t)


class _BetaSDE(SDE):
    """Shared linear ``beta(t)`` schedule of VP and sub-VP."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(N)
        check_positive("beta_min", beta_min)
        check_positive("beta_max", beta_max)
        if beta_max < beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)
        self._discrete_cache: dict = {}

    @property
    def beta_min(self) -> float:
        return self.beta_0

    @property
    def beta_max(self) -> float:
        return self.beta_1

    @property
    def config(self) -> dict:
        return {"beta_min": self.beta_0, "beta_max": self.beta_1, "N": self.N}

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t) = beta_min + t (beta_max - beta_min)``."""
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``-1/2 int_0^t beta(s) ds``."""
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def discrete_betas(self, num_steps: int | None = None, **tensor_kwargs) -> torch.Tensor:
        """The DDPM betas ``linspace(beta_min / n, beta_max / n, n)``."""
        n = self.N if num_steps is None else num_steps
        return torch.linspace(self.beta_0 / n, self.beta_1 / n, n, **tensor_kwargs)

    def discrete_alphas_cumprod(self, num_steps: int | None = None, **tensor_kwargs) -> torch.Tensor:
        """``alpha_bar_i = prod_{j <= i} (1 - beta_j)`` of the DDPM chain (computed in float64)."""
        dtype = tensor_kwargs.pop("dtype", torch.float64)
        betas = self.discrete_betas(num_steps, dtype=torch.float64, **tensor_kwargs)
        return torch.cumprod(1.0 - betas, dim=0).to(dtype)

    def discrete_beta(
        self, t: torch.Tensor, num_steps: int | None = None, t_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``beta`` of one step of the discrete chain ending at ``t`` (so that ``sqrt(1 - beta) = m(t) / m(t_prev)``
        for VP).

        * With ``t_prev``: the exact ``1 - exp(-int_{t_prev}^{t} beta)``, for any grid.
        * Otherwise the reference DDPM chain of ``n = num_steps`` (default ``N``) levels, ``beta(i / (n - 1)) / n``
          at index ``i = floor(t (n - 1))``: at ``n = N`` exactly the chain DDPM-trained models were trained on
          (``DDPMScheduler``'s betas). Where that first-order chain is invalid (``beta_max / n >= 1``, coarse grids
          such as 10 steps, where ``sqrt(1 - beta)`` breaks) the exact value over ``[t - T / n, t]`` is used.
        """
        if t_prev is None:
            n = self.N if num_steps is None else num_steps
            if self.beta_1 / n < 1.0:
                i = self.discrete_index(t, n).to(t.dtype)
                return (self.beta_0 + i / max(n - 1, 1) * (self.beta_1 - self.beta_0)) / n
            t_prev = (t - self.T / n).clamp_min(0.0)
        return -torch.expm1(2.0 * (self.log_mean_coeff(t) - self.log_mean_coeff(t_prev)))

    def langevin_alpha(
        self, t: torch.Tensor, num_steps: int | None = None, t_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        return 1.0 - self.discrete_beta(t, num_steps, t_prev)

    def prior_sampling(self, shape, generator=None, **tensor_kwargs) -> torch.Tensor:
        return torch.randn(shape, generator=generator, **tensor_kwargs)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        return self._gaussian_logp(z, 1.0)


class VPSDE(_BetaSDE):
    """Variance-preserving SDE (DDPM): ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw``.

    Args:
        beta_min (`float`, defaults to 0.1): ``beta(0)``; equals ``N * beta_start`` of a DDPM schedule.
        beta_max (`float`, defaults to 20.0): ``beta(1)``; equals ``N * beta_end``.
        N (`int`, defaults to 1000): number of steps of the discrete DDPM chain.
    """

    def sde(self, x, t):
        self.check_time(t, x)
        beta_t = self.beta(t)
        return -0.5 * broadcast_to(beta_t, x) * x, torch.sqrt(beta_t)

    def marginal_coeffs(self, t):
        log_mean = self.log_mean_coeff(t)
        return torch.exp(log_mean), torch.sqrt(-torch.expm1(2.0 * log_mean))

    def discrete_marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Marginal of the ``N``-step DDPM chain at index ``i = floor(t (N - 1))``:
        ``(sqrt(alpha_bar_i), sqrt(1 - alpha_bar_i))``, what a network trained on the discrete chain (every
        Diffusers DDPM-family scheduler; official ``continuous=False`` VP models) expresses its output in."""
        key = (t.device, t.dtype)
        if key not in self._discrete_cache:
            alpha_bar = self.discrete_alphas_cumprod()
            coeffs = torch.stack([alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()])
            self._discrete_cache[key] = coeffs.to(device=t.device, dtype=t.dtype)
        table = self._discrete_cache[key]
        idx = self.discrete_index(t).to(t.device)
        return table[0][idx], table[1][idx]

    def discretize(self, x, t, num_steps=None, t_prev=None):
        """DDPM chain: ``f = (sqrt(1 - beta_i) - 1) x``, ``G = sqrt(beta_i)`` (exact over ``[t_prev, t]`` if given)."""
        self.check_time(t, x)
        if t_prev is not None:
            return super().discretize(x, t, t_prev=t_prev)
        beta = self.discrete_beta(t, num_steps)
        return broadcast_to(torch.sqrt(1.0 - beta) - 1.0, x) * x, torch.sqrt(beta)


class SubVPSDE(_BetaSDE):
    """Sub-VP SDE: ``dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw``.

    Its marginal std ``1 - exp(-int_0^t beta)`` is bounded by the VP one at every ``t``.

    Args:
        beta_min (`float`, defaults to 0.1): ``beta(0)``.
        beta_max (`float`, defaults to 20.0): ``beta(1)``.
        N (`int`, defaults to 1000): number of steps of the Euler–Maruyama discretisation.
    """

    def sde(self, x, t):
        self.check_time(t, x)
        beta_t = self.beta(t)
        discount = -torch.expm1(4.0 * self.log_mean_coeff(t))
        return -0.5 * broadcast_to(beta_t, x) * x, torch.sqrt(beta_t * discount)

    def marginal_coeffs(self, t):
        log_mean = self.log_mean_coeff(t)
        return torch.exp(log_mean), -torch.expm1(2.0 * log_mean)


class ReverseSDE:
    """Reverse-time SDE ``dx = [f - g^2 score] dt + g dw_bar`` or its probability-flow ODE
    ``dx = [f - g^2 score / 2] dt``.

    Time runs backwards: the returned drift is for ``dt < 0``.

    Args:
        forward (`SDE`): the forward process.
        score_fn (`Callable`): ``score_fn(x, t) -> grad_x log p_t(x)``.
        probability_flow (`bool`): return the ODE (zero diffusion) instead of the SDE.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    def _combine(self, f, g, x, t):
        return reverse_coefficients(f, g, self.score_fn(x, t), self.probability_flow)

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift and diffusion at ``(x, t)``."""
        f, g = self.forward.sde(x, t)
        return self._combine(f, g, x, t)

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, num_steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Discretised reverse chain ``(f - G^2 score, G)``: the predictor moves ``x <- x - f_rev + G_rev z``."""
        f, g = self.forward.discretize(x, t, num_steps)
        return self._combine(f, g, x, t)


_SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE, "sub_vp": SubVPSDE, "sub-vp": SubVPSDE}


def get_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by name (``"ve"``, ``"vp"`` or ``"subvp"``)."""
    if not isinstance(name, str) or name.lower() not in _SDES:
        raise ValueError(f"sde_type must be one of 've', 'vp', 'subvp', got {name!r}")
    return _SDES[name.lower()](**kwargs)
