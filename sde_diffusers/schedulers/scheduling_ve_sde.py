"""Predictor–corrector scheduler for the variance-exploding SDE (SMLD / NCSN / NCSN++)."""

from __future__ import annotations

from diffusers.configuration_utils import register_to_config

from ..scheduler_sde import translate_config
from ..sde import VESDE
from ..validation import check_int
from .scheduling_sde_common import SDESchedulerMixin


class VESDEScheduler(SDESchedulerMixin):
    """Predictor–corrector sampler of the VE SDE for Diffusers sampling loops.

    ``timesteps`` are noise levels ``sigma(t)`` (float tensor), which is what an NCSN-style network takes.
    With a corrector on, every noise level appears ``n_corrector_steps + 1`` times in ``timesteps``: the
    first calls of ``step`` at that level run the corrector, the last runs the predictor, so a plain
    ``for t in scheduler.timesteps`` loop with one model call per step runs the full PC sampler.

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
    ) -> None:
        self.sde = VESDE(
            sigma_min=sigma_min, sigma_max=sigma_max, N=check_int("num_train_timesteps", num_train_timesteps)
        )
        self._init_common(
            prediction_type, sampling_eps, predictor, corrector, snr, n_corrector_steps, time_input, data_range
        )
        self.register_to_config(correct_steps=n_corrector_steps if corrector != "none" else 0)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Like ``ConfigMixin.from_config``; keeps the conventions of a ``ScoreSdeVeScheduler`` config (see the class
        docstring)."""
        config = dict(config or {})
        kwargs = translate_config(config, cls._get_init_keys(cls), kwargs, target_sde="ve")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
