"""Predictor–corrector scheduler for the variance-exploding SDE (SMLD / NCSN / NCSN++)."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config

from ..parameterization import model_output_to_score
from ..scheduler_sde import translate_config
from ..sde import VESDE
from ..validation import check_int
from .scheduling_sde_common import SDESchedulerMixin, SDESchedulerOutput


class VESDEScheduler(SDESchedulerMixin):
    """Predictor–corrector sampler of the VE SDE for Diffusers sampling loops.

    ``timesteps`` are noise levels ``sigma(t)`` (float tensor), which is what an NCSN-style network takes.
    With a corrector on, every noise level appears ``n_corrector_steps + 1`` times in ``timesteps``: the
    first calls of ``step`` at that level run the corrector, the last runs the predictor, so a plain
    ``for t in scheduler.timesteps`` loop with one model call per step runs the full PC sampler.

    It also has the interface of Diffusers' ``ScoreSdeVeScheduler`` that ``ScoreSdeVePipeline`` drives
    (:meth:`set_sigmas`, :attr:`sigmas`, :meth:`step_pred`, :meth:`step_correct`, ``config.correct_steps``), so it
    swaps into that pipeline: ``ScoreSdeVePipeline(unet, VESDEScheduler.from_config(pipe.scheduler.config))``.

    Args:
        num_train_timesteps (`int`, defaults to 1000): number of noise levels ``N`` of the discrete chain.
        sigma_min (`float`, defaults to 0.01): smallest noise level.
        sigma_max (`float`, defaults to 50.0): largest noise level; the loop starts from ``N(0, sigma_max^2 I)``.
        sampling_eps (`float`, defaults to 1e-5): last time of the grid ``linspace(1, sampling_eps, n)``.
        predictor (`str`, defaults to `"reverse_diffusion"`): `"reverse_diffusion"`, `"euler_maruyama"`,
            `"ancestral"` or `"none"`.
        corrector (`str`, defaults to `"langevin"`): `"langevin"`, `"annealed_langevin"` or `"none"`.
        snr (`float`, defaults to 0.16): signal-to-noise ratio that sets the corrector's step size.
        n_corrector_steps (`int`, defaults to 1): corrector steps per noise level.
        langevin_per_sample (`bool`, defaults to `False`): Langevin step size from each sample's own norms
            instead of the batch average (results then do not depend on the batch composition).
        prediction_type (`str`, defaults to `"score"`): what the network predicts: `"score"`, `"epsilon"`,
            `"sample"` or `"v_prediction"`.
        denoise_final (`bool`, defaults to `True`): the last step returns its noise-free mean as ``prev_sample``.
        time_input (`str`, defaults to `"auto"`): the model's time input (`"sigma"`; `"reversed_index"` for a model
            trained on the discrete SMLD chain); ``timesteps`` are in that scale.
        data_range (`tuple[float, float]`, defaults to `(-1.0, 1.0)`): the data range of the model; `(0.0, 1.0)`
            for Diffusers' score-SDE repos (``from_config`` of a ``ScoreSdeVeScheduler`` config sets it).
        spacing (`str`, defaults to `"uniform"`): `"uniform"` in ``t`` or `"karras"` (uniform in ``sigma^(1 / rho)``).
        rho (`float`, defaults to 7.0): exponent of the Karras spacing.
        discretization (`str`, defaults to `"reference"`): `"reference"` (on the uniform grid, SMLD's chain on
            ``n`` levels, as the reference implementation and ``ScoreSdeVeScheduler``) or `"exact"` (the exact
            transition to the next grid time; always so on a Karras grid).

    ``VESDEScheduler.from_config(score_sde_ve_scheduler.config)`` keeps that scheduler's ``sigma_min``,
    ``sigma_max`` (1348 by default), ``N`` (2000), ``snr``, ``sampling_eps``, ``correct_steps`` and the ``[0, 1]``
    data range. ``config.correct_steps`` mirrors the corrector steps per level (0 without a corrector), as
    Diffusers' ``ScoreSdeVePipeline`` reads it.
    """

    _compatibles = ["ScoreSdeVeScheduler"]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        sampling_eps: float = 1e-5,
        predictor: str = "reverse_diffusion",
        corrector: str = "langevin",
        snr: float = 0.16,
        n_corrector_steps: int = 1,
        langevin_per_sample: bool = False,
        prediction_type: str = "score",
        denoise_final: bool = True,
        time_input: str = "auto",
        data_range: tuple[float, float] = (-1.0, 1.0),
        spacing: str = "uniform",
        rho: float = 7.0,
        discretization: str = "reference",
    ) -> None:
        self.sde = VESDE(
            sigma_min=sigma_min, sigma_max=sigma_max, N=check_int("num_train_timesteps", num_train_timesteps)
        )
        self._init_common(
            prediction_type,
            sampling_eps,
            predictor,
            corrector,
            snr,
            n_corrector_steps,
            time_input,
            data_range,
            spacing,
            rho,
            discretization,
        )
        self.register_to_config(correct_steps=n_corrector_steps if corrector != "none" else 0)
        self.sigmas = torch.empty(0)
        self._level: int | None = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Like ``ConfigMixin.from_config``; keeps the conventions of a ``ScoreSdeVeScheduler`` config (see the class
        docstring)."""
        config = dict(config or {})
        kwargs = translate_config(config, cls._get_init_keys(cls), kwargs, target_sde="ve")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the PC schedule (see :class:`SDESchedulerMixin`); leaves the :meth:`set_sigmas` layout."""
        super().set_timesteps(num_inference_steps, device)
        self._level = None

    # ---- Diffusers' ScoreSdeVeScheduler interface --------------------------------------------------------
    def set_sigmas(
        self,
        num_inference_steps: int,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sampling_eps: float | None = None,
    ) -> None:
        """Set ``n`` noise levels for ``ScoreSdeVePipeline``'s loop: ``timesteps`` (one entry per level, in the
        model's scale) and ``sigmas`` (the level's ``sigma(t)``, what that pipeline passes to the UNet).

        After it, :meth:`step_correct` runs the corrector at the current level and :meth:`step_pred` the predictor
        from it to the next; ``step`` runs the predictor only. ``set_timesteps`` restores the PC layout.

        Args:
            num_inference_steps (`int`): number of noise levels ``n``.
            sigma_min, sigma_max, sampling_eps (`float`, *optional*): accepted for Diffusers' signature; they must
                equal the config's (the SDE is fixed at construction).
        """
        n = check_int("num_inference_steps", num_inference_steps)
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("sampling_eps", sampling_eps)):
            if value is not None and float(value) != float(self.config[name]):
                raise ValueError(
                    f"`{name}`={value} differs from the scheduler's {self.config[name]}; build the scheduler with it"
                )
        self._set_grid_schedule(n, ["predictor"], device=None)
        self.sigmas = self.sde.sigma(self._times).to(torch.float32)
        self._level = 0

    def step_correct(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SDESchedulerOutput | tuple:
        """One corrector step at the current noise level (the level the next :meth:`step_pred` starts from).

        Args:
            model_output (`torch.Tensor`): the network output at ``(sample, sigmas[level])``.
            sample (`torch.Tensor`): the current sample.
            generator (`torch.Generator` or a list of them, optional): noise source.
            return_dict (`bool`, defaults to `True`): return an :class:`SDESchedulerOutput` or a tuple.

        Returns:
            :class:`SDESchedulerOutput` or ``(prev_sample,)``.
        """
        index = self._check_level(model_output, sample)
        if self.config.corrector == "none":
            raise ValueError("this scheduler has corrector='none' (config.correct_steps is 0)")
        out = self._level_step("corrector", index, model_output, sample, generator)
        return out if return_dict else (out.prev_sample,)

    def step_pred(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SDESchedulerOutput | tuple:
        """One predictor step from the noise level of ``timestep`` (an entry of ``timesteps``) to the next.

        Args:
            model_output (`torch.Tensor`): the network output at ``(sample, sigma of timestep)``.
            timestep (`torch.Tensor` or `float`): the current entry of ``timesteps``.
            sample (`torch.Tensor`): the current sample.
            generator (`torch.Generator` or a list of them, optional): noise source.
            return_dict (`bool`, defaults to `True`): return an :class:`SDESchedulerOutput` or a tuple.

        Returns:
            :class:`SDESchedulerOutput` (``prev_sample_mean`` is the noise-free step, what ``ScoreSdeVePipeline``
            returns after the last one) or ``(prev_sample, prev_sample_mean)``.
        """
        self._check_level(model_output, sample)
        self._step_index = self._level
        index = self._resolve_index(timestep)
        out = self._level_step("predictor", index, model_output, sample, generator)
        self._level = index + 1
        return out if return_dict else (out.prev_sample, out.prev_sample_mean)

    def _check_level(self, model_output: torch.Tensor, sample: torch.Tensor) -> int:
        if self._level is None:
            raise ValueError("call set_sigmas(num_inference_steps) before step_pred() / step_correct()")
        self._check_step_inputs(model_output, sample)
        if self._level >= len(self._kinds):
            raise ValueError("the sampling loop is finished; call set_sigmas() again to start a new one")
        return self._level

    def _level_step(
        self,
        kind: str,
        index: int,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> SDESchedulerOutput:
        t = self._time_at(index, sample)
        score = model_output_to_score(
            self.sde, model_output, sample, t, self.config.prediction_type, self.config.time_input
        )
        out = self._apply(kind, score, sample, t, self._time_at(index, sample, "next"), generator)
        return SDESchedulerOutput(
            prev_sample=out.prev_sample, prev_sample_mean=out.prev_sample_mean, noise_std=out.noise_std
        )
