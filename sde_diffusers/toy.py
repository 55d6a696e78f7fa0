"""Data whose perturbed marginals are known exactly: diagonal Gaussian mixtures.

For data ``x_0 ~ sum_k w_k N(mu_k, diag(sd_k^2))`` and a linear SDE with ``x_t = m(t) x_0 + s(t) eps``, every
marginal ``p_t`` is again a mixture, ``sum_k w_k N(m mu_k, diag(m^2 sd_k^2 + s^2))``, so its density and score
are closed forms. The demo samples from these scores and the tests measure every sampler against them.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput

from .parameterization import check_time_input, continuous_time, score_to_model_output, training_marginals
from .sde import SDE, get_sde

__all__ = ["GaussianMixture", "ExactScoreModel"]


class GaussianMixture:
    """A mixture of diagonal Gaussians over flattened samples of any shape.

    Args:
        means (`torch.Tensor` of shape `(K, *sample_shape)`): component means.
        stds (`torch.Tensor` of the same shape, or broadcastable): per-dimension standard deviations.
        weights (`torch.Tensor` of shape `(K,)`, optional): mixture weights (normalised; uniform by default).
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor | float, weights: torch.Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() < 2:
            raise ValueError(f"means must have shape (K, *sample_shape), got {tuple(means.shape)}")
        stds = torch.broadcast_to(torch.as_tensor(stds, dtype=torch.float64), means.shape).clone()
        if not torch.all(stds > 0):
            raise ValueError("stds must be positive")
        k = means.shape[0]
        weights = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if weights.shape != (k,) or not torch.all(weights > 0):
            raise ValueError(f"weights must be {k} positive numbers, got {weights.tolist()}")
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()

    @classmethod
    def gaussian(cls, mean: torch.Tensor, std: torch.Tensor | float) -> GaussianMixture:
        """A single diagonal Gaussian."""
        mean = torch.as_tensor(mean, dtype=torch.float64)
        return cls(mean[None], torch.broadcast_to(torch.as_tensor(std, dtype=torch.float64), mean.shape)[None])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the mixture."""
        return torch.einsum("k,k...->...", self.weights, self.means)

    @property
    def std(self) -> torch.Tensor:
        """Per-dimension standard deviation of the mixture."""
        second = torch.einsum("k,k...->...", self.weights, self.means**2 + self.stds**2)
        return torch.sqrt(second - self.mean**2)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """Draw ``n`` samples (on the CPU)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn((n, *self.sample_shape), generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp] * eps).to(dtype)

    def _perturbed(self, x: torch.Tensor, t: torch.Tensor | None, sde: SDE | None, time_input: str = "auto"):
        """Per-component means and variances of ``p_t``, flattened: shapes ``(B, K, D)``."""
        b, k = x.shape[0], self.means.shape[0]
        mu = self.means.reshape(1, k, -1).to(x)
        var = (self.stds**2).reshape(1, k, -1).to(x)
        if sde is None:
            return mu.expand(b, -1, -1), var.expand(b, -1, -1)
        m, s = training_marginals(sde, t.to(x), time_input)
        m, s = m.reshape(b, 1, 1), s.reshape(b, 1, 1)
        return m * mu, m**2 * var + s**2

    def _component_logp(self, x, t, sde, time_input="auto"):
        mu, var = self._perturbed(x, t, sde, time_input)
        diff = x.reshape(x.shape[0], 1, -1) - mu
        logp = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return logp + torch.log(self.weights.to(x)), diff, var

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | None = None, sde: SDE | None = None) -> torch.Tensor:
        """Log-density of ``p_t`` at ``x`` (of the data when ``sde`` is ``None``), one value per sample."""
        logp, _, _ = self._component_logp(x, t, sde)
        return torch.logsumexp(logp, dim=1)

    def score(
        self, x: torch.Tensor, t: torch.Tensor | None = None, sde: SDE | None = None, time_input: str = "auto"
    ) -> torch.Tensor:
        """Exact ``grad_x log p_t(x)``, the shape of ``x``.

        ``time_input`` ``"discrete_index"`` (or ``"reversed_index"``) takes the discrete chain's marginal at ``t``
        instead of the SDE's (see :func:`~sde_diffusers.parameterization.training_marginals`).
        """
        logp, diff, var = self._component_logp(x, t, sde, time_input)
        resp = torch.softmax(logp, dim=1).unsqueeze(-1)
        return (-(resp * diff / var).sum(1)).reshape(x.shape)

    def score_fn(self, sde: SDE):
        """``score_fn(x, t)`` of the perturbed marginals under ``sde``, as the step functions take it."""
        return lambda x, t: self.score(x, t, sde)


class ExactScoreModel(ModelMixin, ConfigMixin):
    """A Diffusers model whose output is the exact score-derived prediction for a Gaussian mixture.

    It stands in for a trained ``UNet2DModel`` in pipelines and scheduler tests: it takes the timestep in
    the scale of ``time_input`` (by default sigma for VE, ``t (N - 1)`` for VP/sub-VP) and returns
    ``UNet2DOutput(sample=...)`` in the requested ``prediction_type``. With ``time_input="discrete_index"`` it is a
    model trained on the discrete DDPM chain (as every Diffusers DDPM-family model): its output is exact for the
    chain's marginal at index ``floor(timestep)``.

    Args:
        means (`list`): component means, shape `(K, C, H, W)` as nested lists.
        stds (`list` or `float`): component standard deviations.
        weights (`list`, optional): mixture weights.
        sde_type (`str`): `"ve"`, `"vp"` or `"subvp"`.
        sde_kwargs (`dict`, optional): constructor arguments of the SDE.
        prediction_type (`str`, defaults to `"epsilon"`): what to output.
        in_channels (`int`, optional), sample_size (`int`, optional): derived from ``means`` for image-shaped data
            (pipelines read them to size their noise); accepted so that a saved config reloads unchanged.
        time_input (`str`, defaults to `"auto"`): the timestep scale and training marginals, one of
            :data:`~sde_diffusers.parameterization.TIME_INPUTS`.
    """

    @register_to_config
    def __init__(
        self,
        means: list,
        stds: list | float = 1.0,
        weights: list | None = None,
        sde_type: str = "vp",
        sde_kwargs: dict | None = None,
        prediction_type: str = "epsilon",
        in_channels: int | None = None,
        sample_size: int | None = None,
        time_input: str = "auto",
    ) -> None:
        super().__init__()
        self.mixture = GaussianMixture(torch.tensor(means), stds, None if weights is None else torch.tensor(weights))
        self.sde = get_sde(sde_type, **(sde_kwargs or {}))
        self.time_input = check_time_input(self.sde, time_input)
        self.prediction_type = prediction_type
        shape = self.mixture.sample_shape
        if len(shape) == 3:  # what UNet2DModel-based pipelines read to size their noise
            self.register_to_config(in_channels=shape[0], sample_size=shape[1])
        # A parameter gives the model a device and dtype, as Diffusers pipelines expect.
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True):
        timestep = torch.as_tensor(timestep, device=sample.device)
        t = continuous_time(self.sde, timestep.to(torch.float64), self.time_input)
        t = t.reshape(-1).expand(sample.shape[0]) if t.numel() == 1 else t.reshape(-1)
        x = sample.double()
        score = self.mixture.score(x, t, self.sde, self.time_input)
        out = score_to_model_output(self.sde, score, x, t, self.config.prediction_type, self.time_input)
        out = out.to(sample.dtype) + 0 * self.dummy
        return UNet2DOutput(sample=out) if return_dict else (out,)
