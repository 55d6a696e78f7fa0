"""Predictor–corrector scheduler for the variance-preserving SDE (DDPM / DDPM++)."""

from __future__ import annotations

from diffusers.configuration_utils import register_to_config

from ..scheduler_sde import DDPM_COMPATIBLES, beta_sde, translate_config
from ..sde import VPSDE
from .scheduling_sde_common import SDESchedulerMixin


class VPSDEScheduler(SDESchedulerMixin):
    """Predictor–corrector sampler of the VP SDE, a drop-in for DDPM/DDIM schedulers.

    The config uses DDPM's names and defaults, so ``VPSDEScheduler.from_config(ddpm_scheduler.config)`` gives
    the continuous SDE of that model (``beta_min = N * beta_start``, ``beta_max = N * beta_end``) and the
    scheduler works inside ``DDPMPipeline``/``DDIMPipeline`` unchanged. ``timesteps`` are ``t * (N - 1)``,
    the DDPM timestep scale a UNet was trained on. With a corrector on, each time appears
    ``n_corrector_steps + 1`` times in ``timesteps`` (corrector calls, then the predictor).

    Args:
        num_train_timesteps (`int`, defaults to 1000): steps ``N`` of the discrete DDPM chain.
        beta_start (`float`, defaults to 1e-4): first DDPM beta.
        beta_end (`float`, defaults to 0.02): last DDPM beta.
        beta_schedule (`str`, defaults to `"linear"`): only `"linear"` has a continuous VP counterpart.
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"v_prediction"`, `"sample"` or `"score"`.
        sampling_eps (`float`, defaults to 1e-3): last time of the grid ``linspace(1, sampling_eps, n)``.
        predictor (`str`, defaults to `"euler_maruyama"`): `"euler_maruyama"`, `"reverse_diffusion"`,
            `"ancestral"` or `"none"`.
        corrector (`str`, defaults to `"none"`): `"langevin"`, `"annealed_langevin"` or `"none"`.
        snr (`float`, defaults to 0.01): signal-to-noise ratio that sets the corrector's step size.
        n_corrector_steps (`int`, defaults to 1): corrector steps per time.
        langevin_per_sample (`bool`, defaults to `False`): per-sample Langevin step sizes.
        denoise_final (`bool`, defaults to `True`): the last step returns its noise-free mean as ``prev_sample``.
        time_input (`str`, defaults to `"auto"`): the model's time input: `"index"` (``t (N - 1)``, continuous-time
            training), `"discrete_index"` (same timesteps, trained on the discrete DDPM chain: the model output is
            read against ``alphas_cumprod``) or `"t"`.
        data_range (`tuple[float, float]`, defaults to `(-1.0, 1.0)`): the data range of the model.
        spacing (`str`, defaults to `"uniform"`): `"uniform"` in ``t`` or `"karras"` (uniform in ``sigma^(1 / rho)``,
            ``sigma = s / m``).
        rho (`float`, defaults to 7.0): exponent of the Karras spacing.
        discretization (`str`, defaults to `"reference"`): `"reference"`: on the uniform grid the DDPM chain of the
            reference implementation, ``beta_i = beta(i / (n - 1)) / n`` (at ``n = N`` exactly ``DDPMScheduler``'s
            betas; the exact transition where ``beta_max / n >= 1``); `"exact"`: the exact transition
            ``1 - exp(-int beta)`` to the next grid time (always so on a Karras grid).

    ``from_config`` of a DDPM-family config (``DDPMScheduler``, ``DDIMScheduler``, ...) sets
    ``time_input="discrete_index"`` for VP: those models were trained on the discrete chain, and the uniform grid then
    ends at the chain's first level (timestep 0), so at ``n = N`` the timesteps are ``DDPMScheduler``'s and the
    ancestral predictor is DDPM's update (with its ``fixed_large`` variance ``beta_i``).
    """

    _compatibles = DDPM_COMPATIBLES + ["ScoreSdeVpScheduler"]
    _sde_class = VPSDE

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        sampling_eps: float = 1e-3,
        predictor: str = "euler_maruyama",
        corrector: str = "none",
        snr: float = 0.01,
        n_corrector_steps: int = 1,
        langevin_per_sample: bool = False,
        denoise_final: bool = True,
        time_input: str = "auto",
        data_range: tuple[float, float] = (-1.0, 1.0),
        spacing: str = "uniform",
        rho: float = 7.0,
        discretization: str = "reference",
    ) -> None:
        self.sde = beta_sde(self._sde_class, num_train_timesteps, beta_start, beta_end, beta_schedule)
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

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Like ``ConfigMixin.from_config``; keeps the conventions of DDPM-family and ``ScoreSdeVpScheduler``
        configs (``beta_min``/``beta_max`` map to ``beta_start``/``beta_end``)."""
        config = dict(config or {})
        target = "vp" if cls._sde_class is VPSDE else "subvp"
        kwargs = translate_config(config, cls._get_init_keys(cls), kwargs, target_sde=target)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
