"""Linear inverse problems with a score model: what inpainting and colorization share.

Both observe an orthogonal projection of the image, ``y = P x_0``: for inpainting ``P`` keeps the known pixels, for
colorization it keeps the grey axis of every pixel's colour (Song et al., 2021, appendix I.2: an orthonormal
colour transform whose first channel is the normalised grey level). So both condition the same way, and one
:class:`LinearObservation` describes either. The ways to condition, chosen by ``method``:

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
    For multimodal data ``p(x_0 | x_t)`` is not Gaussian, so some bias remains: on the ambiguous Gaussian-mixture
    observations of ``benchmarks/conditional_accuracy.py`` the sampled mode weights are typically 2-5x closer to
    the exact posterior than replacement's, but for known pixels in the far tails of two modes (``tail-16d``) or
    hues of nearly equal grey (``three-hues``) guidance commits to the wrong mode and is worse than replacement.

``"guidance+replacement"`` does both (the guidance steers the unobserved pixels, the replacement keeps the observed
ones on the noisy data manifold).

``"smc"`` (twisted sequential Monte Carlo: the Twisted Diffusion Sampler of Wu et al., 2023, with an exact Gaussian
proposal on the observed subspace in the spirit of MCGdiff, Cardoso et al., 2023)
    ``num_particles`` particles per output run through the scheduler's own chain, weighted so that the particle
    system targets ``p_chain(x_t) g_t(x_t)``, where the twist ``g_t = N(y; P x0_hat(x_t), r_t^2 P)`` is the Jacobian
    guidance likelihood above, and resampled (systematic) whenever their effective sample size falls below half.
    Each step reads the scheduler's transition as a Gaussian ``N(mu, sigma^2 I)`` (``prev_sample_mean`` and the
    injected std of our schedulers; DDIM run with ``eta = 1``) and proposes from it: along the unobserved directions
    shifted by ``sigma^2 grad log g_t`` (TDS), along the observed ones by the exact product of the kernel with the next
    twist, linearised around Tweedie's estimate (a Kalman step, which cannot overshoot when the step is wider than
    the twist, as over the last steps of a noiseless observation). The weight update is
    ``g_{t'}(x') / g_t(x) * p(x' | x) / q(x' | x)``, all in closed form; at the end one particle per output is drawn
    by its weight (that is the returned image), and the observation is pasted as for every method. Whatever the
    twist, the weights make the returned image a draw from the posterior of the scheduler's chain given the
    observation as ``num_particles`` grows (up to the Gaussian approximation of ``p(x_0 | x_t)`` at the last noise
    level, ``sigma(eps)``); a better twist only means fewer particles are needed, but a twist wrong by ``n`` nats
    somewhere needs on the order of ``e^n`` particles there (see "Measured" below). Cost per step: one batched
    network call over all particles of all outputs (``num_particles`` evaluations per image) and two backward
    passes (the twist's gradient and its Jacobian variance), as for Jacobian guidance.

    Measured (the README's table): mode-weight TV falls with the particle count on most problems (mean over the
    development problems 9x the Monte-Carlo noise with one particle, 5x with 16, 4x with 64), but where the Gaussian
    twist is badly wrong the particle counts that fit a CPU do not reach the posterior: in the tails (``tail-16d``)
    every particle count is worse than replacement, and between well-separated modes (``issue-16d``) the twist
    overrates particles that have not yet chosen a mode, so with 16-64 particles the samples lie too close to the
    middle (second-moment error up to 14x the noise) although the mode weights are right.

    Diagnosed (``benchmarks/smc_diagnostics.py``, issue 11): the weights are right (on Gaussian data the posterior mean
    and covariance come out exact up to the chain's own discretization error, which does not depend on the particle
    count: variances 3-7% high on average with VE reverse diffusion and 14% low with VP Euler-Maruyama at 100 steps,
    within 3% at 1000; ``tests/test_smc.py`` catches a factor 2 or a sign in the weights). What fails is the Gaussian
    twist where ``p(x_0 | x_t)`` is multimodal: on ``issue-16d`` at ``sigma ~ 0.35`` it overrates particles that have
    not chosen a mode by ~17 nats relative to those that have (both measured against the exact ``log p(y | x_t)``);
    resampling multiplies them, the twist becomes exact again below ``sigma ~ 0.2``, and by then a whole particle
    system may hold no committed particle to move the weight to. So the error does not fall with the particle count
    over the range a CPU affords (second-moment error / noise 2.5, 14, 12, 9.5, 9.7 and the repainted pixels' variance
    0.70, 0.56, 0.47, 0.40, 0.39 of the exact for 1, 16, 64, 256, 1024 particles, VE); a consistent sampler must
    recover eventually, but not at any particle count measured. On ``tail-16d`` the twist at ``sigma ~ 2-3`` favours
    particles heading to the narrow mode by 4-5 nats, and by ``sigma ~ 1.2`` none of 1024 particles is left in the
    other mode. Never resampling removes the shrinkage on ``issue-16d`` (second-moment error 0.7-0.8x the noise) but
    loses the rare mode of ``between-64d`` (TV 7-11x the noise, 0.2-3.8x with resampling); tempering the twist at high
    noise trades the same way (tried with the exponent ``1 / (1 + sigma^2 / 0.3^2)``, 16 particles: second-moment error
    on ``issue-16d`` 1.3-1.7x the noise instead of 6-9x, but TV on ``between-64d`` 12x instead of 0.2-3.8x), so neither
    is used.

    Chain or twist (``benchmarks/smc_chain_floor.py``, ``benchmarks/smc_oracle_twist.py``): what the sampler converges
    to is the chain's marginal at its last evaluated level times the (there nearly exact) twist, so the chain's
    discretization sets a floor: at 100 steps it alone moves the posterior beyond 2x the noise on 6-15 of the
    benchmark's 22 problems (DDIM the most), at 1000 steps (the default) nowhere measurable. At 1000 steps and 16
    particles the same sampler with the exact ``log p(y | x_t)`` as its twist is within 2x the noise as often as exact
    posterior draws (38 of 42 and 23 of 24 runs), with the Gaussian twist on 20 of 42 and 12 of 24: the remaining error
    is the twist's, its values and the proposal it steers alike.

    ``smc_lookahead=True`` evaluates the twist one step ahead: at Tweedie's estimate after one deterministic
    probability-flow (DDIM) step from ``x_t`` to ``sqrt(sigma_t sigma_end)``, with the variance
    ``r^2 = sigma_t^2 / (1 + sigma_t^2 / v)``, ``v`` the within-mode variance from the Jacobian where that step lands;
    the proposal follows it (its gradient through both network calls, its residual and variance in the Kalman step).
    An undecided particle lands in one mode, so it is no longer overrated, and the proposal commits particles early:
    this removes the shrinkage between modes (``benchmarks/smc_lookahead.py``). It is consistent like any twist (the
    weights use the proposal actually drawn; the last level keeps Tweedie's twist) but not exact on Gaussian data
    (the step overstates how far Tweedie's estimate moves with ``x_t``), so it costs accuracy at finite ``K`` where
    the posterior is unimodal, and it does not fix the tails. Cost: a second network call per particle and step and
    one more backward pass. Off by default.

    Why this design: MCGdiff and FPS-SMC, built for noiseless linear problems, need no network gradient, but their
    intermediate targets look at the observed coordinates only, so the particles pick their modes with about the
    prior's weights and the weights must then undo the whole prior/posterior mismatch; the twist through Tweedie's
    estimate sees how the unobserved pixels move the likelihood and steers the particles to the right modes (on the
    benchmark's 64-dimensional mixture with prior weights 0.999 / 0.001 and posterior 0.5 / 0.5, 16 particles
    suffice). Its weakness, measured in ``benchmarks/conditional_accuracy.py``: a moment-matched Gaussian cannot see
    tails, so for an observation deep in the tails of two modes it ranks them by distance at mid noise, before the
    particles commit, and no moderate particle count recovers the other mode.

Every method pastes the observation exactly into the final sample.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from sde_diffusers.sampling import smc
from sde_diffusers.sampling.ode import t_from_sigma
from sde_diffusers.sampling.smc import gaussian_log_likelihood
from sde_diffusers.scheduler_sde import SchedulerSDE
from sde_diffusers.schedulers import ProbabilityFlowScheduler
from sde_diffusers.schedulers.scheduling_sde_common import SDESchedulerMixin
from sde_diffusers.sde import broadcast_to
from sde_diffusers.validation import check_int, check_number, check_positive

from .conditioning import Conditioning, ScoreTerm
from .input_checks import images_to_tensor
from .pipeline_score_sde import ScoreSdePipelineBase, _math_attention

__all__ = [
    "INVERSE_METHODS",
    "LinearObservation",
    "ObservationGuidance",
    "ScoreSdeInverseProblemPipeline",
    "images_to_tensor",
]

INVERSE_METHODS = ("replacement", "guidance", "guidance+replacement", "smc")
#: Particles per output image of ``method="smc"`` when ``num_particles`` is not given.
DEFAULT_NUM_PARTICLES = 16
# Resample a particle system when its effective sample size falls below this fraction of its size.
RESAMPLE_ESS_FRACTION = 0.5
# DDIM-style schedulers run SMC with eta = 1: the DDPM posterior on DDIM's sub-grid, a Gaussian step (eta = 0 is
# deterministic and leaves nothing to reweight).
SMC_DDIM_ETA = 1.0


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

    def evaluate(
        self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, view: SchedulerSDE
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The twist at ``(x, t)``.

        Returns:
            ``(log_lik, residual, r2)``: ``log N(y; P x0_hat(x_t), r_t^2 P)`` of shape ``(batch,)``, differentiable in
            ``x`` through ``score`` (``r_t^2`` held constant); the residual ``P (y - x0_hat)`` (shape of ``x``) and
            ``r_t^2`` (shape ``(batch,)``), both detached.
        """
        obs = self.observation
        x0 = view.to_x0(score, x, t)
        residual = obs.project(obs.observed.to(x0.dtype) - x0)
        r2 = self._posterior_variance(view, x, t, x0, residual)
        log_lik = gaussian_log_likelihood(residual, r2, obs.num_observed.to(r2))
        return log_lik, residual.detach(), r2.detach()

    def __call__(self, x, t, score, view):
        (grad,) = torch.autograd.grad(self.evaluate(x, t, score, view)[0].sum(), x)
        return self.scale * grad


# ---------------------------------------------------------------------------------------------------------
# The shared pipeline base
# ---------------------------------------------------------------------------------------------------------
class ScoreSdeInverseProblemPipeline(ScoreSdePipelineBase):
    """Base of the inpainting and colorization pipelines: builds the conditioning for a :class:`LinearObservation`."""

    #: ``method`` when the call gives none and samples with the scheduler; each pipeline sets its own, from
    #: ``benchmarks/conditional_accuracy.py`` (the cheapest method never worse than replacement on any problem there).
    default_method: str = "replacement"

    def resolve_method(self, method: str | None, sampler: str = "scheduler") -> str:
        """``method``, or for ``None`` the default of this measurement: :attr:`default_method` with the scheduler,
        ``"guidance"`` with an adaptive solver (the only method those take)."""
        if method is not None:
            return method
        return self.default_method if sampler == "scheduler" else "guidance"

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
        if method == "smc" and sampler != "scheduler":
            raise ValueError(
                f"method='smc' moves particles with the scheduler's Gaussian steps; sampler={sampler!r} (an adaptive "
                "solver) has none: use sampler='scheduler'."
            )
        check_number("guidance_scale", guidance_scale, 0.0)
        if isinstance(guidance_variance, str) and guidance_variance != "jacobian":
            raise ValueError(
                f"`guidance_variance` must be a positive number or 'jacobian', got {guidance_variance!r}."
            )
        if guidance_variance != "jacobian":
            check_positive("guidance_variance", guidance_variance)

    def check_smc_inputs(
        self,
        method: str,
        num_particles: object,
        guidance_variance: object = "jacobian",
        smc_lookahead: object = False,
    ) -> int:
        """The particle count per output (1 unless ``method="smc"``); checks that the scheduler can run SMC.

        Raises:
            TypeError / ValueError: ``num_particles`` is not an integer >= 1, ``num_particles`` or
                ``smc_lookahead=True`` is given without ``method="smc"``, ``smc_lookahead`` is not a bool, or the
                scheduler's step is not a Gaussian transition with a known mean and standard deviation.
        """
        if not isinstance(smc_lookahead, bool):
            raise TypeError(f"`smc_lookahead` must be a bool, got {type(smc_lookahead).__name__} {smc_lookahead!r}.")
        if method != "smc":
            if num_particles is not None:
                raise ValueError(f"`num_particles` applies to method='smc', got method={method!r}.")
            if smc_lookahead:
                raise ValueError(f"`smc_lookahead` applies to method='smc', got method={method!r}.")
            return 1
        particles = check_int("num_particles", DEFAULT_NUM_PARTICLES if num_particles is None else num_particles)
        if guidance_variance != "jacobian":
            raise ValueError(
                "method='smc' takes the twist's variance from the network's Jacobian (its proposal needs the "
                f"Jacobian's curvature); guidance_variance={guidance_variance!r} applies to the guidance methods."
            )
        if self._smc_transition_kind() is None:
            name = type(self.sampling_scheduler).__name__
            raise ValueError(
                f"method='smc' needs a scheduler whose step is a Gaussian transition with a known mean and standard "
                f"deviation: our VESDEScheduler / VPSDEScheduler / SubVPSDEScheduler (any predictor and corrector) or "
                f"a DDIM-style scheduler (run with eta={SMC_DDIM_ETA}); {name} is not one (ProbabilityFlowScheduler "
                "and the ODE solvers are deterministic)."
            )
        self.scheduler_sde().sde  # noqa: B018 - raises the explanatory ValueError before any work
        return particles

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

    def _solve(
        self,
        shape: tuple[int, ...],
        make_observation: Callable[[int], LinearObservation],
        *,
        method: str,
        guidance_scale: float,
        guidance_variance: float | str,
        class_labels: torch.Tensor | None,
        classifier_scale: float,
        num_particles: int,
        smc_lookahead: bool = False,
        **sample_kwargs: Any,
    ) -> tuple[torch.Tensor, int]:
        """Sample ``shape`` given the observation ``make_observation(repeats)`` (built for ``batch * repeats``
        samples); return the samples in the network range and the number of batched network calls."""
        if method != "smc":
            cond = self._inverse_conditioning(
                make_observation(1), method, guidance_scale, guidance_variance, class_labels, classifier_scale
            )
            return self._sample(shape, cond=cond, **sample_kwargs)
        labels = None if class_labels is None else class_labels.repeat_interleave(num_particles)
        observation = make_observation(num_particles)  # one copy of the observation per particle
        cond = self._inverse_conditioning(observation, "smc", 0.0, 1.0, labels, classifier_scale)
        twist = ObservationGuidance(observation, guidance_variance, 1.0)
        return self._sample_smc(
            shape, cond, twist, num_particles, guidance_scale, smc_lookahead=smc_lookahead, **sample_kwargs
        )

    # ---- sequential Monte Carlo ------------------------------------------------------------------------
    def _smc_transition_kind(self) -> str | None:
        """``"sde"`` (our stochastic schedulers), ``"ddim"`` (a step taking ``eta`` and ``variance_noise``) or
        ``None`` (no Gaussian transition this sampler can read)."""
        scheduler = self.sampling_scheduler
        if isinstance(scheduler, SDESchedulerMixin):
            return None if isinstance(scheduler, ProbabilityFlowScheduler) else "sde"
        accepted = set(inspect.signature(scheduler.step).parameters)
        return "ddim" if {"eta", "variance_noise"} <= accepted else None

    def _gaussian_transition(
        self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scheduler's step as ``N(mean, std^2 I)``: ``mean`` shaped like ``sample``, ``std`` of shape
        ``(batch,)``. The scheduler's own noise draw is discarded; the caller draws the proposal's."""
        flat, scheduler = (sample.shape[0], -1), self.sampling_scheduler
        if self._smc_transition_kind() == "ddim":
            # The step is mean + std * variance_noise: read both from two noise-free calls (the step is stateless).
            def step(noise: torch.Tensor) -> torch.Tensor:
                out = scheduler.step(model_output, timestep, sample, eta=SMC_DDIM_ETA, variance_noise=noise)
                return out.prev_sample

            mean = step(torch.zeros_like(sample))
            return mean, (step(torch.ones_like(sample)) - mean).reshape(flat).mean(1)
        out = scheduler.step(model_output, timestep, sample, generator=torch.Generator().manual_seed(0))
        std = getattr(out, "noise_std", None)
        if std is None:
            # Recover the injected std from the replayed draw: prev_sample - prev_sample_mean = std * z, per sample.
            probe = torch.Generator().manual_seed(0)
            z = randn_tensor(sample.shape, generator=probe, device=sample.device, dtype=sample.dtype).reshape(flat)
            std = ((out.prev_sample - out.prev_sample_mean).reshape(flat) * z).sum(1) / z.pow(2).sum(1)
        return out.prev_sample_mean, std.to(sample.dtype).reshape(-1).expand(sample.shape[0])

    def _smc_evaluate(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        view: SchedulerSDE,
        cond: Conditioning,
        twist: ObservationGuidance,
    ) -> dict[str, torch.Tensor]:
        """One batched network call at the particles: the prior chain's model output ``out`` (with any classifier
        terms), the twist ``log_g``, its gradient ``grad``, the residual ``P (y - x0_hat)``, ``r2`` and the time."""
        model_input = self.sampling_scheduler.scale_model_input(sample, timestep)
        t = view.continuous(timestep, model_input.shape[0], model_input)
        attention = _math_attention() if twist.needs_second_order else contextlib.nullcontext()
        with torch.enable_grad(), attention:
            x = model_input.detach().requires_grad_(True)
            out = self._network(x, timestep, cond)
            score = view.to_score(out, x, t)
            log_g, residual, r2 = twist.evaluate(x, t, score, view)
            (grad,) = torch.autograd.grad(log_g.sum(), x)
        if cond.score_terms:
            total = score.detach() + sum(term(x, t, score.detach(), view) for term in cond.score_terms)
            out = view.from_score(total, model_input, t)
        return {"out": out.detach(), "log_g": log_g.detach().double(), "grad": grad, "residual": residual, "r2": r2}

    def _smc_evaluate_lookahead(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        last_timestep: torch.Tensor,
        view: SchedulerSDE,
        cond: Conditioning,
        twist: ObservationGuidance,
    ) -> dict[str, torch.Tensor]:
        """:meth:`_smc_evaluate` with the one-step lookahead twist (``smc_lookahead=True``; see ``__call__``).

        From ``x_t`` one probability-flow (DDIM) step lands at ``sigma_land = sqrt(sigma_t sigma_end)``
        (:func:`~sde_diffusers.sampling.smc.lookahead_sigma`, ``sigma_end`` the chain's last level); the twist is
        ``N(y; P x0_hat(x_land), r^2 P)`` with ``r^2 = sigma_t^2 / (1 + sigma_t^2 / v)``, ``v`` the within-mode
        variance from the network's Jacobian at the landing point. Two network calls (at ``x_t``, whose output also
        drives the chain, and at ``x_land``), the Jacobian probe at ``x_land`` and one backward pass through both
        calls for the gradient; the Jacobian at ``x_t`` is not needed. ``residual``, ``r2`` and ``grad`` are the
        lookahead's, so the proposal follows this twist.
        """
        obs = twist.observation
        model_input = self.sampling_scheduler.scale_model_input(sample, timestep)
        n = model_input.shape[0]
        t = view.continuous(timestep, n, model_input)
        t_end = view.continuous(last_timestep, n, model_input)
        m_now, s_now = view.marginal_coeffs(t)
        m_end, s_end = view.marginal_coeffs(t_end)
        sigma_land = smc.lookahead_sigma(s_now / m_now, s_end / m_end)
        t_land = t_from_sigma(view, sigma_land, torch.minimum(t_end, t), t).to(t.dtype)
        m_land, s_land = view.marginal_coeffs(t_land)
        with torch.enable_grad(), _math_attention():
            x = model_input.detach().requires_grad_(True)
            out = self._network(x, timestep, cond)
            score = view.to_score(out, x, t)
            x_land = smc.probability_flow_step(x, view.to_x0(score, x, t), m_now, s_now, m_land, s_land)
            # The landing point as a leaf: the Jacobian probe there must not reach back through the call at x_t.
            leaf = x_land.detach().requires_grad_(True)
            x0_land = view.to_x0(
                view.to_score(self._network(leaf, view.model_timestep(t_land), cond), leaf, t_land), leaf, t_land
            )
            residual = obs.project(obs.observed.to(x0_land.dtype) - x0_land)
            r2_land = twist._posterior_variance(view, leaf, t_land, x0_land, residual)
            r2 = smc.lookahead_variance((s_now / m_now) ** 2, r2_land, (s_land / m_land) ** 2).to(r2_land.dtype)
            log_g = gaussian_log_likelihood(residual, r2, obs.num_observed.to(r2))
            (grad_land,) = torch.autograd.grad(log_g.sum(), leaf)
            (grad,) = torch.autograd.grad(x_land, x, grad_outputs=grad_land)
        if cond.score_terms:
            total = score.detach() + sum(term(x, t, score.detach(), view) for term in cond.score_terms)
            out = view.from_score(total, model_input, t)
        return {
            "out": out.detach(),
            "log_g": log_g.detach().double(),
            "grad": grad,
            "residual": residual.detach(),
            "r2": r2.detach(),
        }

    @torch.no_grad()
    def _sample_smc(
        self,
        shape: tuple[int, ...],
        cond: Conditioning,
        twist: ObservationGuidance,
        num_particles: int,
        guidance_scale: float,
        *,
        smc_lookahead: bool = False,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        sampler: str = "scheduler",
        sampler_options: dict | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Twisted SMC over the scheduler's chain (see the module docstring); one particle per output at the end."""
        batch, k = shape[0], num_particles
        n = batch * k
        scheduler, view, obs = self.sampling_scheduler, self.scheduler_sde(), twist.observation
        device = self._execution_device
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        # A list of generators (one per output) drives that output's K particles, so each output is reproducible alone.
        particle_gen = [g for g in generator for _ in range(k)] if isinstance(generator, list) else generator
        x = self._initial_latents((n, *shape[1:]), particle_gen, latents, scheduler.init_noise_sigma, cond)

        def uniforms() -> torch.Tensor:
            return smc.uniforms_from_normals(randn_tensor((batch,), generator=generator, device=device))

        log_w = torch.zeros(batch, k, device=device, dtype=torch.float64)
        log_g_prev = torch.zeros(n, device=device, dtype=torch.float64)
        pending = torch.zeros_like(log_g_prev)  # log p / q of the proposal that produced each particle
        self._num_timesteps = len(timesteps)
        # The lookahead aims at the chain's last noise level, or the one before where the last is 0 (DDIM's index 0
        # maps to t = 0): a rollout to sigma = 0 lands on Tweedie's estimate, where the twist's variance vanishes.
        look_to = len(timesteps) - 1
        if (
            smc_lookahead
            and look_to > 0
            and float(view.marginal_coeffs(view.continuous(timesteps[-1], 1, x))[1][0]) <= 0
        ):
            look_to -= 1
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if smc_lookahead and i < look_to:
                    ev = self._smc_evaluate_lookahead(x, t, timesteps[look_to], view, cond, twist)
                else:  # at the last level the lookahead has nowhere to go: Tweedie's twist, as the final weight needs
                    ev = self._smc_evaluate(x, t, view, cond, twist)
                log_w = log_w + (ev["log_g"] - log_g_prev + pending).view(batch, k)
                # Resample the systems whose weights have degenerated (a uniform is drawn for every output at every
                # step, so an output's random stream does not depend on the others').
                u = uniforms()
                resample = smc.effective_sample_size(log_w) < RESAMPLE_ESS_FRACTION * k
                if bool(resample.any()):
                    ancestors = torch.where(
                        resample[:, None],
                        smc.systematic_resample(log_w, u),
                        torch.arange(k, device=device).expand(batch, k),
                    )
                    index = smc.flat_indices(ancestors, k)
                    x, ev = x[index], {name: value[index] for name, value in ev.items()}
                    log_w = torch.where(resample[:, None], torch.zeros_like(log_w), log_w)
                mean, std = self._gaussian_transition(ev["out"], t, x)
                noise = randn_tensor(x.shape, generator=particle_gen, device=device, dtype=x.dtype)
                if i == len(timesteps) - 1:
                    # The last step leaves no later twist to correct a proposal: it is the model's own.
                    x, pending = mean + broadcast_to(std, x) * noise, torch.zeros_like(pending)
                else:
                    m_now, s_now = view.marginal_coeffs(view.continuous(t, n, x))
                    m_next, s_next = view.marginal_coeffs(view.continuous(timesteps[i + 1], n, x))
                    sigma2 = (s_now / m_now) ** 2
                    # Local prior variance v along the observed directions, from r^2 = v sigma^2 / (v + sigma^2).
                    inv_v = ((sigma2 - ev["r2"]) / (ev["r2"] * sigma2)).clamp_min(0.0)
                    gain, scale = smc.observed_subspace_step(std, s_next, m_next, inv_v)
                    guided = ev["grad"] - obs.project(ev["grad"])
                    drift = broadcast_to(gain, x) * ev["residual"] + guidance_scale * broadcast_to(std**2, x) * guided
                    shift = drift / broadcast_to(torch.where(std > 0, std, torch.ones_like(std)), x)
                    shift = torch.where(broadcast_to(std > 0, x), shift, torch.zeros_like(shift))
                    x = mean + broadcast_to(std, x) * (shift + noise - broadcast_to(1 - scale, x) * obs.project(noise))
                    pending = smc.proposal_log_ratio(noise, shift, scale, obs.project, obs.num_observed).double()
                log_g_prev = ev["log_g"]
                if callback_on_step_end is not None:
                    local = {"latents": x}
                    callback_kwargs = {name: local[name] for name in (callback_on_step_end_tensor_inputs or [])}
                    x = (callback_on_step_end(self, i, t, callback_kwargs) or {}).get("latents", x)
                progress.update()
        chosen = smc.select_by_weight(log_w, uniforms())
        return x[smc.flat_indices(chosen[:, None], k)], len(timesteps)

    def _check_size(self, height: int, width: int, name: str) -> None:
        _, expected_h, expected_w = self._sample_shape_from_config()
        if (height, width) != (expected_h, expected_w):
            raise ValueError(
                f"`{name}` is {height}x{width} (height x width) but the UNet generates {expected_h}x{expected_w} "
                "images; resize it first."
            )
