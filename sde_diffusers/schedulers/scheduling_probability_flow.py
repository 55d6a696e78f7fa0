"""Deterministic sampling of the probability-flow ODE (VE, VP, sub-VP) with fixed Euler or Heun steps."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config

from ..parameterization import model_output_to_score, score_to_x0
from ..sampling.ode import probability_flow_euler_step, probability_flow_heun_step, time_grid
from ..scheduler_sde import DDPM_COMPATIBLES, beta_sde, translate_config
from ..sde import VESDE, get_sde
from ..validation import check_choice, check_int, check_open_interval, check_positive
from .scheduling_sde_common import SPACINGS, SDESchedulerBase, SDESchedulerOutput

__all__ = ["ProbabilityFlowScheduler"]


class ProbabilityFlowScheduler(SDESchedulerBase):
    """Fixed-step Euler or Heun solver of the probability-flow ODE (Song et al., 2021) for Diffusers loops.

    The ODE shares every marginal with the SDE, so it samples the same distribution deterministically, with far
    fewer network calls than a predictor–corrector sampler. Steps are taken in the scaled variables
    ``x / m(t)`` against ``sigma = s(t) / m(t)``, where the ODE of every linear SDE reads
    ``d(x / m) / d sigma = -s(t) score`` (see :mod:`sde_diffusers.sampling.ode`): Euler there is DDIM for VP and
    the EDM Euler step for VE, Heun is EDM's second-order sampler (Karras et al., 2022). The model is evaluated at
    ``num_inference_steps`` times from ``T`` to ``sampling_eps``; the last step goes to ``sigma = 0`` (Tweedie's
    denoiser), as Diffusers' Euler/Heun schedulers end.

    Heun repeats timesteps exactly like ``HeunDiscreteScheduler``: ``timesteps = [t_0, t_1, t_1, ..., t_{n-1},
    t_{n-1}]`` (``2 n - 1`` entries, the last step is an Euler step), so ``DDPMPipeline``, ``DDIMPipeline`` and a
    plain ``for t in scheduler.timesteps`` loop run it with one model call per ``step``. Timesteps are in the
    model's input scale: ``sigma(t)`` (float) for VE, ``t (N - 1)`` for VP/sub-VP.

    The VP defaults equal ``DDPMScheduler``'s, so ``ProbabilityFlowScheduler.from_config(ddpm.config)`` gives the
    continuous VP SDE of that model (``beta_min = N beta_start``, ``beta_max = N beta_end``); configs of
    ``VESDEScheduler``/``ScoreSdeVeScheduler`` give VE and ``SubVPSDEScheduler`` sub-VP.

    Args:
        num_train_timesteps (`int`, defaults to 1000): ``N`` of the SDE (the model's timestep scale for VP/sub-VP).
        beta_start (`float`, defaults to 1e-4): first DDPM beta (VP/sub-VP).
        beta_end (`float`, defaults to 0.02): last DDPM beta (VP/sub-VP).
        beta_schedule (`str`, defaults to `"linear"`): only `"linear"` has a continuous counterpart.
        prediction_type (`str`, *optional*): `"epsilon"`, `"v_prediction"`, `"sample"` or `"score"`; defaults to
            `"score"` for VE and `"epsilon"` for VP/sub-VP.
        sde_type (`str`, defaults to `"vp"`): `"ve"`, `"vp"` or `"subvp"`.
        sigma_min (`float`, defaults to 0.01): smallest noise level (VE).
        sigma_max (`float`, defaults to 50.0): largest noise level (VE); the loop starts from ``N(0, sigma_max^2)``.
        solver (`str`, defaults to `"heun"`): `"euler"` (``n`` model calls) or `"heun"` (``2 n - 1``).
        spacing (`str`, defaults to `"uniform"`): `"uniform"` in ``t`` or `"karras"` (uniform in
            ``sigma^(1/rho)``, ``sigma = s / m``).
        rho (`float`, defaults to 7.0): exponent of the Karras spacing.
        sampling_eps (`float`, defaults to 1e-3): the last time at which the model is evaluated.
        time_input (`str`, defaults to `"auto"`): the model's time input (see
            :data:`~sde_diffusers.parameterization.TIME_INPUTS`); `"discrete_index"` for VP models trained on the
            discrete DDPM chain (``from_config`` of a DDPM-family config sets it).
        data_range (`tuple[float, float]`, defaults to `(-1.0, 1.0)`): the data range of the model (`(0.0, 1.0)`
            from a ``ScoreSdeVeScheduler`` config).
    """

    _compatibles = DDPM_COMPATIBLES + [
        "VPSDEScheduler",
        "SubVPSDEScheduler",
        "VESDEScheduler",
        "ScoreSdeVpScheduler",
        "ScoreSdeVeScheduler",
    ]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        prediction_type: str | None = None,
        sde_type: str = "vp",
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        solver: str = "heun",
        spacing: str = "uniform",
        rho: float = 7.0,
        sampling_eps: float = 1e-3,
        time_input: str = "auto",
        data_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        sde_key = str(sde_type).lower().replace("-", "").replace("_", "")
        check_choice("sde_type", sde_key, ("ve", "vp", "subvp"))
        n = check_int("num_train_timesteps", num_train_timesteps, 2)
        if sde_key == "ve":
            self.sde = VESDE(sigma_min=sigma_min, sigma_max=sigma_max, N=n)
        else:
            self.sde = beta_sde(type(get_sde(sde_key)), n, beta_start, beta_end, beta_schedule)
        if prediction_type is None:
            prediction_type = "score" if sde_key == "ve" else "epsilon"
            self.register_to_config(prediction_type=prediction_type)
        self._check_common_config(prediction_type, time_input, data_range)
        check_choice("solver", solver, ("euler", "heun"))
        check_choice("spacing", spacing, SPACINGS)
        check_positive("rho", rho)
        check_open_interval("sampling_eps", sampling_eps, 0.0, self.sde.T)
        self._heun_state: tuple[torch.Tensor, ...] | None = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Like ``ConfigMixin.from_config``, recognising the SDE and conventions of our other schedulers' and
        Diffusers' configs (see :func:`~sde_diffusers.scheduler_sde.translate_config`).

        ``VESDEScheduler``/``ScoreSdeVeScheduler`` configs give ``sde_type="ve"``, a saved ``SubVPSDEScheduler``
        config gives ``"subvp"`` (an in-memory ``scheduler.config`` has no class name and reads as VP: pass
        ``sde_type="subvp"``); ``ScoreSdeVpScheduler``'s ``beta_min``/``beta_max`` map to ``beta_start``/``beta_end``.
        """
        config = dict(config or {})
        kwargs = translate_config(config, cls._get_init_keys(cls), kwargs)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def order(self) -> int:
        """2 for Heun (two model calls per step), 1 for Euler; Diffusers pipelines read it."""
        return 2 if self.config.solver == "heun" else 1

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the evaluation times and ``timesteps`` (repeated for Heun's second stage).

        Args:
            num_inference_steps (`int`): number of distinct times ``n`` at which the model is evaluated.
            device (`str` or `torch.device`, optional): where to put ``timesteps``.
        """
        n = check_int("num_inference_steps", num_inference_steps)
        grid = time_grid(self.sde, n, spacing=self.config.spacing, eps=self.config.sampling_eps, rho=self.config.rho)
        following = torch.cat([grid[1:], grid.new_zeros(1)])  # the last step lands on the data (sigma = 0)
        if self.config.solver == "heun":
            # stage 1 at t_i, then stage 2 at t_{i+1}; the last step (to sigma = 0) has no second stage
            times = torch.cat([grid[:1], grid[1:].repeat_interleave(2)])
            next_times = torch.cat([following[:1], torch.stack([grid[1:], following[1:]], 1).reshape(-1)])
            kinds = ["first"] + ["second", "first"] * (n - 1)
        else:
            times, next_times, kinds = grid, following, ["first"] * n
        self._set_schedule(times, next_times, kinds, n, device)
        self._heun_state = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float | int,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> SDESchedulerOutput | tuple:
        """One Euler step, or one stage of a Heun step, of the probability-flow ODE.

        Args:
            model_output (`torch.Tensor`): the network output at ``(sample, timestep)``.
            timestep (`torch.Tensor` or `float`): the current entry of ``timesteps``.
            sample (`torch.Tensor`): the current sample (for Heun's second stage: the previous ``prev_sample``).
            generator: unused (the ODE is deterministic); accepted for Diffusers pipelines.
            return_dict (`bool`, defaults to `True`): return an :class:`SDESchedulerOutput` or a tuple.
            **kwargs: ignored (``DDIMPipeline`` passes ``eta`` and ``use_clipped_model_output``).

        Returns:
            :class:`SDESchedulerOutput` (``prev_sample_mean`` equals ``prev_sample``, ``noise_std`` is zero) or
            ``(prev_sample, prev_sample_mean)``.
        """
        self._check_step_inputs(model_output, sample)
        index = self._resolve_index(timestep)
        t = self._time_at(index, sample)
        score = model_output_to_score(
            self.sde, model_output, sample, t, self.config.prediction_type, self.config.time_input
        )
        if self._kinds[index] == "first":
            t_next = self._time_at(index, sample, "next")
            out = probability_flow_euler_step(self.sde, score, sample, t, t_next)
            has_second_stage = self.config.solver == "heun" and index + 1 < len(self._kinds)
            self._heun_state = (sample, score, t, t_next) if has_second_stage else None
        else:
            if self._heun_state is None:
                raise ValueError("Heun's second stage needs the first: run the loop from the first timestep")
            x, first_score, t_first, t_next = self._heun_state
            out = probability_flow_heun_step(self.sde, first_score, x, t_first, t_next, score)
            self._heun_state = None
        self._step_index = index + 1
        x0 = score_to_x0(self.sde, score, sample, t, self.config.time_input)
        if not return_dict:
            return out.prev_sample, out.prev_sample
        return SDESchedulerOutput(
            prev_sample=out.prev_sample,
            prev_sample_mean=out.prev_sample,
            pred_original_sample=x0,
            noise_std=out.noise_std,
        )
