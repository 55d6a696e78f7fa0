"""Linear inverse problems with a score model: what inpainting and colorization share.

Both observe an orthogonal projection of the image, ``y = P x_0``: for inpainting ``P`` keeps the known pixels, for
colorization it keeps the grey axis of every pixel's colour (Song et al., 2021, appendix I.2: an orthonormal
colour transform whose first channel is the normalised grey level). So both condition the same way, and one
:class:`LinearObservation` describes either. Two ways to condition, chosen by ``method``:

``"replacement"`` (the paper's method)
    After every predictor and corrector update, the observed component of the sample is replaced by the observation
    forward-noised to the sample's next noise level (``scheduler.add_noise``), ``x <- x - P x + P(noised y)``. It
    is cheap, but the unobserved pixels see the observation only through that fresh noise: at the noise levels where
    a sample picks its mode, the observation is mostly drowned, so the modes are drawn with close to their *prior*
    weights instead of their posterior weights (measured in ``benchmarks/conditional_accuracy.py``).

``"guidance"`` (Tweedie likelihood guidance, as in DPS / Pi-GDM)
    Add ``grad_x log p_t(y | x_t)`` to the score, with the likelihood approximated by the Gaussian
    ``N(y; P x0_hat(x_t), r_t^2 P)`` around Tweedie's denoiser ``x0_hat = E[x_0 | x_t]``; the gradient goes through
    the network (one backward pass per evaluation). For Gaussian data ``N(mu, v I)`` this is the exact conditional
    score when ``r_t^2 = v sigma_t^2 / (v + sigma_t^2)`` with ``sigma_t = s(t) / m(t)`` (the posterior variance of
    ``x_0`` given ``x_t``), with ``v = guidance_variance``. ``guidance_variance="jacobian"`` (the default) instead
    takes the posterior variance from the network itself for each sample and time, through second-order Tweedie
    ``Cov[x_0 | x_t] = (s^2 / m) d x0_hat / d x_t``, along the residual ``P (y - x0_hat)``, the one direction the
    likelihood is evaluated in: no data variance to choose, exact for Gaussian data whose posterior covariance is
    isotropic on the observed subspace (e.g. i.i.d. pixels), deterministic, at the cost of a second backward pass.
    For multimodal data ``p(x_0 | x_t)`` is not Gaussian, so some bias remains: on ambiguous Gaussian-mixture
    observations the sampled mode weights are 0.02 to 0.11 (total variation) from the exact posterior, against 0.17
    to 0.27 for replacement, whose weights stay near the prior.

``"guidance+replacement"`` does both (the guidance steers the unobserved pixels, the replacement keeps the observed
ones on the noisy data manifold). Every method pastes the observation exactly into the final sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from sde_diffusers.scheduler_sde import SchedulerSDE
from sde_diffusers.sde import broadcast_to
from sde_diffusers.validation import check_number, check_positive

from .conditioning import Conditioning, ScoreTerm
from .input_checks import images_to_tensor
from .pipeline_score_sde import ScoreSdePipelineBase

__all__ = [
    "INVERSE_METHODS",
    "LinearObservation",
    "ObservationGuidance",
    "ScoreSdeInverseProblemPipeline",
    "images_to_tensor",
]

INVERSE_METHODS = ("replacement", "guidance", "guidance+replacement")


# ---------------------------------------------------------------------------------------------------------
# The observation and the guidance term
# ---------------------------------------------------------------------------------------------------------
@dataclass
class LinearObservation:
    """An observation ``y = P x_0`` by an orthogonal projection ``P``, in the network's data range.

    Args:
        observed (`torch.Tensor` of shape `(batch, channels, height, width)`): ``P x_0`` (zero off the observed
            subspace).
        project (`Callable`): ``project(x) = P x`` for tensors shaped like ``observed``; must be an orthogonal
            projection (``P = P^T = P^2``).
        num_observed (`torch.Tensor` of shape `(batch,)`): observed dimension ``trace(P)`` per sample.
    """

    observed: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]
    num_observed: torch.Tensor

    def replace(self, sample: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """``sample - P sample + P observed``: the observed component of ``sample`` set to that of ``observed``."""
        return sample - self.project(sample) + self.project(observed)


class ObservationGuidance(ScoreTerm):
    """``scale * grad_x log N(y; P x0_hat(x_t), r_t^2 P)``: Tweedie likelihood guidance (see the module docstring).

    Args:
        observation (`LinearObservation`): what is observed.
        variance (`float` or `"jacobian"`): the prior variance ``v`` of ``r_t^2 = v sigma^2 / (v + sigma^2)``, or
            ``"jacobian"`` to take ``r_t^2`` from the network's Jacobian along the residual.
        scale (`float`): multiplies the gradient (1 is the Bayes-consistent value).
    """

    needs_model_graph = True

    def __init__(self, observation: LinearObservation, variance: float | str, scale: float) -> None:
        self.observation, self.variance, self.scale = observation, variance, scale
        self.needs_second_order = variance == "jacobian"

    def _posterior_variance(
        self, view: SchedulerSDE, x: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        mean_coeff, std = view.marginal_coeffs(t)
        sigma2 = (std / mean_coeff) ** 2
        if self.variance != "jacobian":
            v = float(self.variance)
            return v * sigma2 / (v + sigma2)
        # Posterior variance of x_0 along the unit residual e: e^T Cov[x_0 | x_t] e with Cov = (s^2 / m) J and
        # J = d x0_hat / d x_t. J e comes from differentiating the vector-Jacobian product u -> J^T u once more.
        # Along e is the only direction the Gaussian likelihood is evaluated in (exact when the covariance is
        # isotropic on the observed subspace), and unlike a random trace probe it adds no noise to the guidance.
        e = residual.detach()
        e = e / broadcast_to(e.flatten(1).norm(dim=1).clamp_min(torch.finfo(e.dtype).tiny), e)
        u = torch.zeros_like(x0, requires_grad=True)
        (jt_u,) = torch.autograd.grad(x0, x, grad_outputs=u, create_graph=True)
        (je,) = torch.autograd.grad(jt_u, u, grad_outputs=e, retain_graph=True)
        var = std**2 / mean_coeff * (e * je).flatten(1).sum(1)
        # Keep the estimate between 1e-3 times the unit-variance value and the Gaussian bound sigma^2.
        return var.detach().clamp(1e-3 * sigma2 / (1 + sigma2), sigma2)

    def __call__(self, x, t, score, view):
        obs = self.observation
        x0 = view.to_x0(score, x, t)
        residual = obs.project(obs.observed.to(x0.dtype) - x0)
        r2 = self._posterior_variance(view, x, t, x0, residual)
        log_lik = -(residual**2).flatten(1).sum(1) / (2 * r2)
        (grad,) = torch.autograd.grad(log_lik.sum(), x)
        return self.scale * grad


# ---------------------------------------------------------------------------------------------------------
# The shared pipeline base
# ---------------------------------------------------------------------------------------------------------
class ScoreSdeInverseProblemPipeline(ScoreSdePipelineBase):
    """Base of the inpainting and colorization pipelines: builds the conditioning for a :class:`LinearObservation`."""

    @staticmethod
    def check_method_inputs(
        method: object, guidance_scale: object, guidance_variance: object, sampler: str = "scheduler"
    ) -> None:
        """Validate ``method`` (and that it fits ``sampler``), ``guidance_scale`` and ``guidance_variance``."""
        if sampler != "scheduler" and "replacement" in str(method):
            raise ValueError(
                f"method={method!r} projects known pixels after each scheduler step; sampler={sampler!r} has no such "
                "steps: use method='guidance'."
            )
        if method not in INVERSE_METHODS:
            raise ValueError(f"`method` must be one of {INVERSE_METHODS}, got {method!r}.")
        check_number("guidance_scale", guidance_scale, 0.0)
        if isinstance(guidance_variance, str) and guidance_variance != "jacobian":
            raise ValueError(
                f"`guidance_variance` must be a positive number or 'jacobian', got {guidance_variance!r}."
            )
        if guidance_variance != "jacobian":
            check_positive("guidance_variance", guidance_variance)

    def _replacement_hook(self, observation: LinearObservation) -> Callable:
        def after_step(sample: torch.Tensor, index: int, generator: Any) -> torch.Tensor:
            scheduler = self.sampling_scheduler
            timesteps = scheduler.timesteps
            if index + 1 >= len(timesteps):  # the last step returned clean data
                return observation.replace(sample, observation.observed.to(sample.dtype))
            # The sample now sits at the noise level of the next entry of `timesteps` (for a PC scheduler that is the
            # same level after a corrector call): noise the observation to that level in the scheduler's own scale.
            noise = randn_tensor(tuple(sample.shape), generator=generator, device=sample.device, dtype=sample.dtype)
            t_next = timesteps[index + 1].reshape(1).expand(sample.shape[0])
            noisy = scheduler.add_noise(observation.observed.to(sample.dtype), noise, t_next)
            return observation.replace(sample, noisy)

        return after_step

    def _inverse_conditioning(
        self,
        observation: LinearObservation,
        method: str,
        guidance_scale: float,
        guidance_variance: float | str,
        class_labels: torch.Tensor | None,
        classifier_scale: float,
    ) -> Conditioning:
        terms = self._classifier_terms(class_labels, classifier_scale)
        if "guidance" in method and guidance_scale > 0:
            terms.append(ObservationGuidance(observation, guidance_variance, guidance_scale))
        return Conditioning(
            class_labels=class_labels if self.num_unet_classes is not None else None,
            score_terms=terms,
            after_step=self._replacement_hook(observation) if "replacement" in method else None,
        )

    def _check_size(self, height: int, width: int, name: str) -> None:
        _, expected_h, expected_w = self._sample_shape_from_config()
        if (height, width) != (expected_h, expected_w):
            raise ValueError(
                f"`{name}` is {height}x{width} (height x width) but the UNet generates {expected_h}x{expected_w} "
                "images; resize it first."
            )
