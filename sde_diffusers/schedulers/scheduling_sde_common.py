"""What the SDE schedulers share.

* :class:`SDESchedulerBase`: the Diffusers interface every SDE scheduler has (model-time scale, training marginals,
  ``add_noise``, ``get_velocity``, the timestep schedule and its step counter). ``ProbabilityFlowScheduler`` builds
  on it.
* :class:`SDESchedulerMixin`: the predictor–corrector method on top of it (VE, VP and sub-VP schedulers).

The schedulers are thin adapters: they keep the timestep grid and hand one model output at a time (as a score) to
the step kernels of :mod:`sde_diffusers.sampling`. No formula lives here; the config is validated once, in the
constructor and ``set_timesteps``, never per step.
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
from ..sampling import CORRECTOR_KERNELS, CORRECTORS, PREDICTOR_KERNELS, PREDICTORS, StepOutput, time_grid
from ..scheduler_sde import DDPM_COMPATIBLES, check_data_range
from ..sde import SDE, broadcast_to
from ..validation import check_choice, check_int, check_open_interval, check_positive

__all__ = [
    "SDESchedulerOutput",
    "SDESchedulerBase",
    "SDESchedulerMixin",
    "DDPM_COMPATIBLES",
    "SPACINGS",
    "DISCRETIZATIONS",
]

SPACINGS = ("uniform", "karras")
#: ``"reference"``: on a uniform grid, the discrete chains of the reference implementation (SMLD, DDPM at index
#: ``floor(t (n - 1))``); ``"exact"``: the exact transition between consecutive grid times (any grid).
DISCRETIZATIONS = ("reference", "exact")


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
        noise_std (`torch.Tensor` of shape `(batch,)`, optional):
            Standard deviation of the Gaussian noise this step added, per sample: the step's transition density is
            ``N(prev_sample_mean, noise_std^2 I)`` (zeros for a deterministic step and a denoised last step).
    """

    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor
    pred_original_sample: torch.Tensor | None = None
    noise_std: torch.Tensor | None = None


class SDESchedulerBase(SchedulerMixin, ConfigMixin):
    """The Diffusers interface shared by every SDE scheduler: time scales, marginals, the schedule's bookkeeping.

    Subclasses set ``self.sde`` in ``__init__``, validate their config, and build the schedule in
    ``set_timesteps`` with :meth:`_set_schedule`.
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

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def _per_sample_time(self, timesteps: torch.Tensor | float | int, like: torch.Tensor) -> torch.Tensor:
        t = self.continuous_timesteps(timesteps).to(like.device, like.dtype)
        return t.reshape(-1).expand(like.shape[0]) if t.numel() == 1 else t.reshape(-1)

    def _check_common_config(
        self, prediction_type: str, time_input: str, data_range: tuple[float, float] | list[float]
    ) -> None:
        check_prediction_type(prediction_type)
        check_time_input(self.sde, time_input)
        # stored as a list, as the config reads back from JSON
        self.register_to_config(data_range=list(check_data_range(data_range)))
        self.timesteps = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._kinds: list[str] | None = None
        self._step_index: int | None = None

    def _set_schedule(
        self,
        times: torch.Tensor,
        next_times: torch.Tensor,
        kinds: list[str],
        num_inference_steps: int,
        device: str | torch.device | None,
    ) -> None:
        """Store a schedule: one entry per ``step`` call, its continuous time, the time it steps to and its kind."""
        self.num_inference_steps = num_inference_steps
        self._kinds = kinds
        self._times = times.to(torch.float64)
        self._next_times = next_times.to(torch.float64)
        self.timesteps = self.model_timesteps(self._times).to(device=device, dtype=torch.float32)
        self._timesteps_host = self.timesteps.cpu()
        self._times_cache: dict = {}
        self._step_index = None

    def _time_at(self, index: int, like: torch.Tensor, which: str = "times") -> torch.Tensor:
        """Continuous time (``which="times"``) or next time (``"next"``) of entry ``index``, shape ``(batch,)``,
        cached on the sample's device (no host copy per step)."""
        key = (which, like.device, like.dtype)
        if key not in self._times_cache:
            source = self._times if which == "times" else self._next_times
            self._times_cache[key] = source.to(device=like.device, dtype=like.dtype)
        return self._times_cache[key][index].expand(like.shape[0])

    def _check_step_inputs(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        if getattr(self, "_kinds", None) is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        for name, value in (("model_output", model_output), ("sample", sample)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if sample.dim() < 2:
            raise ValueError(f"sample must have a batch dimension, got shape {tuple(sample.shape)}")

    def _resolve_index(self, timestep: torch.Tensor | float | int) -> int:
        """Position in the schedule: the running counter, checked against ``timestep``.

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


class SDESchedulerMixin(SDESchedulerBase):
    """The predictor–corrector sampler over a grid of times (VE, VP, sub-VP schedulers).

    With a corrector on, each grid time appears ``n_corrector_steps + 1`` times in ``timesteps``: the first calls of
    ``step`` there run the corrector, the last the predictor, so a plain ``for t in scheduler.timesteps`` loop with
    one model call per step runs the whole PC sampler. The grid is ``spacing="uniform"`` in ``t`` from ``T`` to
    ``sampling_eps`` (to 0, the chain's first level, for ``time_input="discrete_index"``) or ``"karras"`` (uniform in
    ``sigma^(1 / rho)``, ``sigma = s / m``). ``discretization="reference"`` takes, on the uniform grid, the discrete
    chains of the reference implementation (at ``n = N`` exactly the chain a discrete model was trained on);
    otherwise every step is the exact transition to the next grid time (:mod:`sde_diffusers.sampling.predictors`).
    """

    # ---- the predictor-corrector schedule ----------------------------------------------------------
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
        spacing: str = "uniform",
        rho: float = 7.0,
        discretization: str = "reference",
    ) -> None:
        """Validate the shared config before any work starts."""
        self._check_common_config(prediction_type, time_input, data_range)
        check_choice("predictor", predictor, (*PREDICTORS, "none"))
        check_choice("corrector", corrector, (*CORRECTORS, "none"))
        if predictor == "none" and corrector == "none":
            raise ValueError("predictor and corrector cannot both be 'none'")
        check_int("n_corrector_steps", n_corrector_steps)
        check_positive("snr", snr)
        check_open_interval("sampling_eps", sampling_eps, 0.0, self.sde.T)
        check_choice("spacing", spacing, SPACINGS)
        check_positive("rho", rho)
        check_choice("discretization", discretization, DISCRETIZATIONS)

    def _sub_steps(self) -> list[str]:
        """Kinds of the calls made at one grid time: ``k`` corrector steps, then the predictor."""
        kinds = ["corrector"] * self.config.n_corrector_steps if self.config.corrector != "none" else []
        return kinds + (["predictor"] if self.config.predictor != "none" else [])

    def _grid(self, n: int) -> torch.Tensor:
        """The ``n`` distinct grid times, decreasing from ``T`` (float64)."""
        if self.config.spacing == "uniform":
            # A model trained on the discrete chain has a level at t = 0 (timestep 0, DDPMScheduler's last).
            end = 0.0 if self.config.time_input == "discrete_index" else self.config.sampling_eps
            return torch.linspace(self.sde.T, end, n, dtype=torch.float64)
        return time_grid(self.sde, n, spacing="karras", eps=self.config.sampling_eps, rho=self.config.rho)

    @property
    def _reference_chain(self) -> bool:
        return self.config.spacing == "uniform" and self.config.discretization == "reference"

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the grid of ``n`` times and the per-call schedule of sub-steps.

        Args:
            num_inference_steps (`int`): number of noise levels ``n``.
            device (`str` or `torch.device`, optional): where to put ``timesteps``.
        """
        n = check_int("num_inference_steps", num_inference_steps)
        self._set_grid_schedule(n, self._sub_steps(), device)

    def _set_grid_schedule(self, n: int, sub_steps: list[str], device: str | torch.device | None) -> None:
        grid = self._grid(n)
        following = torch.cat([grid[1:], grid.new_zeros(1)])  # the last step goes to t = 0
        k = len(sub_steps)
        self._set_schedule(grid.repeat_interleave(k), following.repeat_interleave(k), sub_steps * n, n, device)

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
        self._check_step_inputs(model_output, sample)
        index = self._resolve_index(timestep)
        t = self._time_at(index, sample)
        score = model_output_to_score(
            self.sde, model_output, sample, t, self.config.prediction_type, self.config.time_input
        )
        out = self._apply(self._kinds[index], score, sample, t, self._time_at(index, sample, "next"), generator)
        prev_sample, prev_mean, noise_std = out.prev_sample, out.prev_sample_mean, out.noise_std
        self._step_index = index + 1
        if self._step_index == len(self._kinds) and self.config.denoise_final:
            prev_sample, noise_std = prev_mean, torch.zeros_like(noise_std)
        x0 = score_to_x0(self.sde, score, sample, t, self.config.time_input)
        if not return_dict:
            return prev_sample, prev_mean
        return SDESchedulerOutput(
            prev_sample=prev_sample, prev_sample_mean=prev_mean, pred_original_sample=x0, noise_std=noise_std
        )

    def _apply(
        self,
        kind: str,
        score: torch.Tensor,
        sample: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> StepOutput:
        """One corrector or predictor step from ``t`` (towards ``t_next``) with the checked-once kernels."""
        # The reference chain is a step of the uniform n-level grid; anything else goes to the next grid time.
        t_to, n = (None, self.num_inference_steps) if self._reference_chain else (t_next, None)
        if kind == "corrector":
            kernel = CORRECTOR_KERNELS[self.config.corrector]
            return kernel(
                self.sde, score, sample, t, t_to, n, None, generator, self.config.snr, self.config.langevin_per_sample
            )
        return PREDICTOR_KERNELS[self.config.predictor](self.sde, score, sample, t, t_to, n, None, generator)
