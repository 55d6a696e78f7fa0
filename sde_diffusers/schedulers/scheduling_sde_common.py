"""What every SDE scheduler shares: building the SDE from the config, the model-time scale, the step counter.

The schedulers are thin adapters: they keep the timestep grid and hand one model output at a time to the
pure step functions of :mod:`sde_diffusers.sampling`. No formula lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..parameterization import (
    check_prediction_type,
    check_time_input,
    continuous_time,
    model_output_to_score,
    model_time,
    score_to_x0,
    training_marginals,
)
from ..sampling import CORRECTORS, PREDICTORS
from ..scheduler_sde import DDPM_COMPATIBLES, check_data_range
from ..sde import SDE, broadcast_to
from ..validation import check_choice, check_int, check_open_interval, check_positive

__all__ = [
    "SDESchedulerOutput",
    "SDESchedulerMixin",
    "DDPM_COMPATIBLES",
]


@dataclass
class SDESchedulerOutput(BaseOutput):
    """Output of an SDE scheduler's ``step``.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch, channels, height, width)`):
            The sample after this step; feed it to the next model call.
        prev_sample_mean (`torch.Tensor` of the same shape):
            The step without its final noise injection (the denoised result on the last step).
        pred_original_sample (`torch.Tensor` of the same shape, optional):
            Tweedie's estimate ``E[x_0 | x_t]`` from this step's model output.
    """

    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SDESchedulerMixin(SchedulerMixin, ConfigMixin):
    """Timestep grid, step counter and model-output conversion shared by the SDE schedulers.

    Subclasses set ``self.sde`` in ``__init__``. The default sub-step schedule is predictor–corrector; a
    scheduler with another method overrides ``_sub_steps`` (the calls made at one grid time) and ``_apply``
    (one call).
    """

    order = 1
    sde: SDE

    # ---- public Diffusers interface ----------------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        """Std of the prior the sampling loop starts from (``sigma_max`` for VE, 1 for VP/sub-VP)."""
        return self.sde.prior_std

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next ``step`` call (``None`` before the first)."""
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | float | None = None) -> torch.Tensor:
        """Identity: score models take the noisy sample as it is."""
        return sample

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous ``t`` to the model's timestep scale (``time_input``: sigma for VE, ``t (N - 1)`` for VP)."""
        return model_time(self.sde, t, self.config.time_input)

    def continuous_timesteps(self, timesteps: torch.Tensor | float | int) -> torch.Tensor:
        """The model's timestep scale back to continuous ``t``."""
        timesteps = torch.as_tensor(timesteps)
        return continuous_time(self.sde, timesteps.to(torch.float64), self.config.time_input)

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, s)`` of the marginal the model was trained with at ``t`` (the discrete chain's for
        ``time_input="discrete_index"``, the SDE's otherwise); shape ``(batch,)`` each."""
        return training_marginals(self.sde, t, self.config.time_input)

    def _per_sample_time(self, timesteps: torch.Tensor | float | int, like: torch.Tensor) -> torch.Tensor:
        t = self.continuous_timesteps(timesteps).to(like.device, like.dtype)
        return t.reshape(-1).expand(like.shape[0]) if t.numel() == 1 else t.reshape(-1)

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | float | int
    ) -> torch.Tensor:
        """The ``v_prediction`` target ``v = m(t) noise - s(t) x_0`` (Diffusers' ``get_velocity``), ``sample = x_0``.

        Args:
            sample (`torch.Tensor`): clean data ``x_0``, shape `(batch, ...)`.
            noise (`torch.Tensor`): the noise, same shape.
            timesteps (`torch.Tensor` of shape `(batch,)`, or a scalar): model-scale timesteps.
        """
        m, s = (broadcast_to(c, sample) for c in self.marginal_coeffs(self._per_sample_time(timesteps, sample)))
        return m * noise - s * sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | float | int
    ) -> torch.Tensor:
        """Forward-perturb clean samples: ``m(t) x_0 + s(t) noise`` with ``timesteps`` in the model's scale and the
        marginals of :meth:`marginal_coeffs` (for ``time_input="discrete_index"`` exactly ``DDPMScheduler.add_noise``).

        Args:
            original_samples (`torch.Tensor`): clean data ``x_0``, shape `(batch, ...)`.
            noise (`torch.Tensor`): standard-normal noise, same shape.
            timesteps (`torch.Tensor` of shape `(batch,)`, or a scalar): model-scale timesteps.

        Returns:
            `torch.Tensor`: the noisy samples.
        """
        if noise.shape != original_samples.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)} but original_samples has {tuple(original_samples.shape)}"
            )
        t = self._per_sample_time(timesteps, original_samples)
        m, s = (broadcast_to(c, original_samples) for c in self.marginal_coeffs(t))
        return m * original_samples + s * noise

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the grid ``linspace(T, sampling_eps, n)`` and the per-call schedule of sub-steps.

        Args:
            num_inference_steps (`int`): number of noise levels ``n``.
            device (`str` or `torch.device`, optional): where to put ``timesteps``.
        """
        n = check_int("num_inference_steps", num_inference_steps)
        grid = torch.linspace(self.sde.T, self.config.sampling_eps, n, dtype=torch.float64)
        kinds: list[str] = []
        times: list[float] = []
        for t in grid.tolist():
            for kind in self._sub_steps():
                kinds.append(kind)
                times.append(t)
        self.num_inference_steps = n
        self._kinds = kinds
        self._times = torch.tensor(times, dtype=torch.float64)
        self.timesteps = self.model_timesteps(self._times).to(device=device, dtype=torch.float32)
        self._timesteps_host = self.timesteps.cpu()
        self._times_cache: dict = {}
        self._step_index: int | None = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float | int,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> SDESchedulerOutput | tuple:
        """Advance one sub-step (a corrector or a predictor step) with one model output.

        Args:
            model_output (`torch.Tensor`): the network output at ``(sample, timestep)``.
            timestep (`torch.Tensor` or `float`): the current entry of ``timesteps``.
            sample (`torch.Tensor`): the current sample.
            generator (`torch.Generator` or a list of them, optional): noise source (a list: one per sample).
            return_dict (`bool`, defaults to `True`): return an :class:`SDESchedulerOutput` or a tuple.
            **kwargs: ignored (Diffusers' DDIM pipeline passes ``eta`` and ``use_clipped_model_output``).

        Returns:
            :class:`SDESchedulerOutput` or ``(prev_sample, prev_sample_mean)``.
        """
        if getattr(self, "_kinds", None) is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        self._check_step_inputs(model_output, sample)
        index = self._resolve_index(timestep)
        t = self._time_at(index, sample).expand(sample.shape[0])
        score = model_output_to_score(
            self.sde, model_output, sample, t, self.config.prediction_type, self.config.time_input
        )
        prev_sample, prev_mean = self._apply(self._kinds[index], score, sample, t, generator)
        self._step_index = index + 1
        if self._step_index == len(self._kinds) and self.config.denoise_final:
            prev_sample = prev_mean
        x0 = score_to_x0(self.sde, score, sample, t, self.config.time_input)
        if not return_dict:
            return prev_sample, prev_mean
        return SDESchedulerOutput(prev_sample=prev_sample, prev_sample_mean=prev_mean, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ---- the predictor-corrector schedule (a subclass with another method overrides these two) ------
    def _sub_steps(self) -> list[str]:
        """Kinds of the calls made at one grid time: ``k`` corrector steps, then the predictor."""
        kinds = ["corrector"] * self.config.n_corrector_steps if self.config.corrector != "none" else []
        return kinds + (["predictor"] if self.config.predictor != "none" else [])

    def _apply(
        self,
        kind: str,
        score: torch.Tensor,
        sample: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def score_fn(x: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
            return score  # the step functions call it exactly once, at (sample, t)

        n = self.num_inference_steps
        if kind == "corrector":
            extra = {"per_sample": self.config.langevin_per_sample} if self.config.corrector == "langevin" else {}
            return CORRECTORS[self.config.corrector](
                self.sde, score_fn, sample, t, snr=self.config.snr, num_steps=n, generator=generator, **extra
            )
        return PREDICTORS[self.config.predictor](self.sde, score_fn, sample, t, num_steps=n, generator=generator)

    def _init_common(
        self,
        prediction_type: str,
        sampling_eps: float,
        predictor: str,
        corrector: str,
        snr: float,
        n_corrector_steps: int,
        time_input: str = "auto",
        data_range: tuple[float, float] | list[float] = (-1.0, 1.0),
    ) -> None:
        """Validate the shared config before any work starts."""
        check_prediction_type(prediction_type)
        check_time_input(self.sde, time_input)
        # stored as a list, as the config reads back from JSON
        self.register_to_config(data_range=list(check_data_range(data_range)))
        check_choice("predictor", predictor, (*PREDICTORS, "none"))
        check_choice("corrector", corrector, (*CORRECTORS, "none"))
        if predictor == "none" and corrector == "none":
            raise ValueError("predictor and corrector cannot both be 'none'")
        check_int("n_corrector_steps", n_corrector_steps)
        check_positive("snr", snr)
        check_open_interval("sampling_eps", sampling_eps, 0.0, self.sde.T)
        self.timesteps = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._kinds: list[str] | None = None
        self._step_index = None

    def _check_step_inputs(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        for name, value in (("model_output", model_output), ("sample", sample)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if sample.dim() < 2:
            raise ValueError(f"sample must have a batch dimension, got shape {tuple(sample.shape)}")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}"
            )

    def _time_at(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """Continuous time of entry ``index``, cached on the sample's device (no host copy per step)."""
        key = (like.device, like.dtype)
        if key not in self._times_cache:
            self._times_cache[key] = self._times.to(device=like.device, dtype=like.dtype)
        return self._times_cache[key][index]

    def _resolve_index(self, timestep: torch.Tensor | float | int) -> int:
        """Position in the sub-step schedule: the running counter, checked against ``timestep``.

        A timestep on an accelerator is not read back (that would synchronise every step); the counter is
        trusted once the first call has located the start.
        """
        index = self._step_index
        on_device = isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu"
        if index is not None and on_device:
            if index >= len(self._kinds):
                raise ValueError("the sampling loop is finished; call set_timesteps() again to start a new one")
            return index
        value = float(torch.as_tensor(timestep).reshape(-1)[0])
        host = self._timesteps_host
        if index is None:
            # First call: start at the first grid entry equal to ``timestep`` (lets a loop begin mid-way).
            close = torch.isclose(host.double(), torch.tensor(value, dtype=torch.float64), rtol=1e-5, atol=1e-6)
            matches = torch.nonzero(close)
            if len(matches) == 0:
                raise ValueError(f"timestep {value} is not in scheduler.timesteps")
            index = int(matches[0])
        if index >= len(self._kinds):
            raise ValueError("the sampling loop is finished; call set_timesteps() again to start a new one")
        expected = float(host[index])
        if abs(expected - value) > 1e-5 * max(1.0, abs(expected)):
            raise ValueError(f"step() expected timestep {expected} (entry {index} of timesteps), got {value}")
        return index
