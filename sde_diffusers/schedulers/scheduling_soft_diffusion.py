"""Soft Diffusion scheduler (Daras et al. 2022): blur + noise corruptions, momentum / naive / deterministic steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..corruption import CorruptionSchedule, fit_wasserstein_schedule
from ..sampling.soft import SOFT_SAMPLERS
from ..validation import check_choice, check_int, check_positive

__all__ = ["SoftDiffusionScheduler", "SoftDiffusionSchedulerOutput"]

# Above this, the most corrupted level still shows structure, and a flat mean-colour start would be wrong.
_MAX_PRIOR_RESIDUAL = 0.05


@dataclass
class SoftDiffusionSchedulerOutput(BaseOutput):
    """Output of :meth:`SoftDiffusionScheduler.step`.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch, channels, height, width)`):
            The sample at the next (less corrupted) level; on the last step, the clean estimate.
        pred_original_sample (`torch.Tensor` of the same shape):
            The clean-image estimate ``x0_hat`` used by this step (the model output, clipped if configured).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class SoftDiffusionScheduler(SchedulerMixin, ConfigMixin):
    """Sampler for Soft Diffusion models: ``x_t = C_t x_0 + s_t * eta`` with ``C_t`` a DCT Gaussian blur.

    The network predicts the clean image ``x_0`` (``prediction_type="sample"``) and is conditioned on
    ``timesteps``: integers ``i`` in ``[0, num_train_timesteps - 1]``, the corruption time being
    ``t = i / (num_train_timesteps - 1)`` (``t = 0`` least, ``t = 1`` most corrupted), exactly as a
    ``UNet2DModel`` is conditioned in DDPM. A model trained with continuous times should be fed
    ``t * (num_train_timesteps - 1)`` (:func:`~sde_diffusers.losses.soft_score_matching_loss` does this
    when given the scheduler).

    Sampling loop (``n`` network evaluations)::

        scheduler.set_timesteps(n)
        x = scheduler.initial_sample((batch, channels, h, w), generator=g)  # or reference=train_images
        for t in scheduler.timesteps:
            x0_hat = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(x0_hat, t, x, generator=g).prev_sample

    ``timesteps`` runs from ``num_train_timesteps - 1`` down to ``0``. Each step but the last moves the
    sample to the next entry with the configured sampler (:mod:`sde_diffusers.sampling.soft`); the last,
    at ``t = 0``, returns the model's clean estimate ``x0_hat`` (the least corrupted level still carries
    ``blur_sigma_min`` and ``noise_min``, which a final momentum step would keep).

    Starting distribution: the most corrupted level ``C_1 x_0 + s_1 eta``. With the default
    ``blur_sigma_max`` (the image size) ``C_1`` leaves less than 0.8 % of any non-constant frequency, so
    ``C_1 x_0`` is a flat image of ``x_0``'s mean colour. :meth:`initial_sample` therefore draws either

    * from ``reference`` clean images (exact: ``C_1 x_ref + s_1 eta`` for uniformly drawn references), or
    * from the stored mean-colour prior: a Gaussian over the per-image channel means, ``prior_mean`` and
      ``prior_cov`` (set them with :meth:`set_prior` or :meth:`from_data`; they are saved in the config).

    ``init_noise_sigma`` is ``s_1``, the std of the noise part only: a plain ``randn * init_noise_sigma``
    start lacks the mean colour and is *not* the starting distribution.

    Args:
        num_train_timesteps (`int`, defaults to 1000): number of corruption levels ``N`` (>= 2).
        image_size (`int` or `[height, width]`, defaults to 32): the image size the schedule is built for;
            other sizes are refused.
        blur_sigma_min (`float`, defaults to 0.5): blur (pixels) at ``t = 0`` of the default geometric path.
        blur_sigma_max (`float`, optional): blur at ``t = 1``; defaults to ``max(height, width)``.
        noise_min (`float`, defaults to 0.01): noise std at ``t = 0`` (linear in ``t``), > 0.
        noise_max (`float`, defaults to 0.1): noise std at ``t = 1``.
        blur_sigmas (`list[float]`, optional): an explicit table of blur levels at ``t_i = i / (K - 1)``
            (e.g. fitted with :meth:`from_data`); overrides the four parameters above, with ``noise_stds``.
        noise_stds (`list[float]`, optional): the matching noise table.
        sampler (`str`, defaults to `"momentum"`): `"momentum"` (the paper's sampler), `"naive"` or
            `"deterministic"`.
        prediction_type (`str`, defaults to `"sample"`): the network predicts ``x_0``; the only option.
        clip_sample (`bool`, defaults to `False`): clip ``x0_hat`` to ``[-clip_sample_range, clip_sample_range]``.
        clip_sample_range (`float`, defaults to 1.0): the clipping bound.
        prior_mean (`list[float]`, optional): mean of the per-image channel means (length ``channels``).
        prior_cov (`list[list[float]]`, optional): their ``channels x channels`` covariance.
    """

    _compatibles: list[str] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        image_size: int | Sequence[int] = 32,
        blur_sigma_min: float = 0.5,
        blur_sigma_max: float | None = None,
        noise_min: float = 0.01,
        noise_max: float = 0.1,
        blur_sigmas: Sequence[float] | None = None,
        noise_stds: Sequence[float] | None = None,
        sampler: str = "momentum",
        prediction_type: str = "sample",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        prior_mean: Sequence[float] | None = None,
        prior_cov: Sequence[Sequence[float]] | None = None,
    ) -> None:
        n = check_int("num_train_timesteps", num_train_timesteps, 2)
        check_choice("sampler", sampler, tuple(SOFT_SAMPLERS))
        if prediction_type != "sample":
            raise ValueError(
                f"prediction_type must be 'sample' (Soft Diffusion networks predict x_0), got {prediction_type!r}"
            )
        check_positive("clip_sample_range", clip_sample_range)
        size = tuple(image_size) if isinstance(image_size, (list, tuple)) else image_size
        if (blur_sigmas is None) != (noise_stds is None):
            raise ValueError("blur_sigmas and noise_stds must be given together (an explicit level table)")
        if blur_sigmas is not None:
            self.corruption = CorruptionSchedule(list(blur_sigmas), list(noise_stds), image_size=size)
        else:
            self.corruption = CorruptionSchedule.default(
                size,
                blur_sigma_min=blur_sigma_min,
                blur_sigma_max=blur_sigma_max,
                noise_min=noise_min,
                noise_max=noise_max,
                num_levels=n,
            )
        self._prior = self._check_prior(prior_mean, prior_cov)
        self.timesteps = torch.empty(0, dtype=torch.int64)
        self.num_inference_steps: int | None = None

    # ---- construction from data -------------------------------------------------------------------------
    @classmethod
    def from_data(cls, images: torch.Tensor, *, fit_schedule: bool = True, **config) -> SoftDiffusionScheduler:
        """A scheduler whose levels (optionally) and starting prior are fitted to ``images``.

        Args:
            images (`torch.Tensor` of shape `(batch, channels, H, W)`): training images (as the network sees
                them, e.g. scaled to ``[-1, 1]``); a few hundred suffice.
            fit_schedule (`bool`, defaults to `True`): space the ``num_train_timesteps`` levels evenly in
                Wasserstein-2 distance along the configured path
                (:func:`~sde_diffusers.corruption.fit_wasserstein_schedule`); stored as ``blur_sigmas`` /
                ``noise_stds``.
            **config: other constructor arguments; ``image_size`` defaults to the images' size.

        Returns:
            :class:`SoftDiffusionScheduler` with ``prior_mean`` / ``prior_cov`` set.
        """
        if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
            raise TypeError("images must be a floating-point tensor of shape (batch, channels, H, W)")
        config.setdefault("image_size", [int(images.shape[-2]), int(images.shape[-1])])
        scheduler = cls(**config)
        scheduler.corruption.check_images(images, "images")
        if fit_schedule and scheduler.config.blur_sigmas is None:
            fitted = fit_wasserstein_schedule(
                images, path=scheduler.corruption, num_levels=scheduler.config.num_train_timesteps
            )
            scheduler = cls(
                **{
                    **config,
                    "blur_sigmas": fitted.blur_sigmas.tolist(),
                    "noise_stds": fitted.noise_stds.tolist(),
                }
            )
        scheduler.set_prior(images)
        return scheduler

    def set_prior(self, images: torch.Tensor) -> None:
        """Fit the mean-colour prior (``prior_mean``, ``prior_cov``) to ``images`` and store it in the config.

        Args:
            images (`torch.Tensor` of shape `(batch >= 2, channels, H, W)`): training images.
        """
        self.corruption.check_images(images, "images")
        if images.shape[0] < 2:
            raise ValueError("images must hold at least 2 images to estimate a covariance")
        colours = images.detach().to(torch.float64).mean(dim=(-2, -1))  # (batch, channels)
        mean = colours.mean(0)
        cov = torch.atleast_2d(torch.cov(colours.T, correction=0))
        self.register_to_config(prior_mean=mean.tolist(), prior_cov=cov.tolist())
        # No longer defaults: ``from_config`` would otherwise drop the fitted prior.
        unset = [k for k in self.config.get("_use_default_values", []) if k not in ("prior_mean", "prior_cov")]
        self.register_to_config(_use_default_values=unset)
        self._prior = self._check_prior(self.config.prior_mean, self.config.prior_cov)

    @staticmethod
    def _check_prior(mean: object, cov: object) -> tuple[torch.Tensor, torch.Tensor] | None:
        if mean is None and cov is None:
            return None
        if mean is None or cov is None:
            raise ValueError("prior_mean and prior_cov must be given together")
        try:
            m = torch.tensor(mean, dtype=torch.float64)
            c = torch.tensor(cov, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError("prior_mean must be a list of numbers and prior_cov a list of lists of numbers") from err
        if m.dim() != 1 or c.shape != (m.numel(), m.numel()):
            raise ValueError(
                f"prior_cov must be channels x channels = {m.numel()} x {m.numel()} for prior_mean of length "
                f"{m.numel()}, got shape {tuple(c.shape)}"
            )
        if not (torch.isfinite(m).all() and torch.isfinite(c).all()) or not torch.allclose(c, c.T):
            raise ValueError("prior_mean and prior_cov must be finite and prior_cov symmetric")
        eig = torch.linalg.eigvalsh(c)
        if float(eig.min()) < -1e-9 * max(1.0, float(eig.abs().max())):
            raise ValueError("prior_cov must be positive semi-definite")
        # Square root through the eigendecomposition: works for singular covariances (e.g. grey RGB data).
        vals, vecs = torch.linalg.eigh(c)
        return m, vecs * vals.clamp_min(0).sqrt()

    # ---- the Diffusers interface --------------------------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        """``s_1``: std of the noise part of the starting distribution (see :meth:`initial_sample`)."""
        return float(self.corruption.noise_stds[-1])

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def continuous_time(self, timesteps: torch.Tensor | float | int) -> torch.Tensor:
        """Model timesteps (``0 .. N-1``) to corruption time ``t = timesteps / (N - 1)`` (float64)."""
        ts = torch.as_tensor(timesteps).to(torch.float64)
        if not bool(torch.isfinite(ts).all()) or bool(((ts < 0) | (ts > self.config.num_train_timesteps - 1)).any()):
            raise ValueError(
                f"timesteps must lie in [0, num_train_timesteps - 1] = [0, {self.config.num_train_timesteps - 1}]"
            )
        return ts / (self.config.num_train_timesteps - 1)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Corruption time ``t`` in ``[0, 1]`` to the model's timestep scale ``t (N - 1)`` (float)."""
        return t * (self.config.num_train_timesteps - 1)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` levels, evenly spaced in ``t`` from ``N - 1`` down to ``0``.

        Args:
            num_inference_steps (`int`): number of network evaluations, ``1 <= n <= num_train_timesteps``.
            device (`str` or `torch.device`, optional): where to put ``timesteps`` (int64).
        """
        n = check_int("num_inference_steps", num_inference_steps)
        big_n = self.config.num_train_timesteps
        if n > big_n:
            raise ValueError(f"num_inference_steps ({n}) must be <= num_train_timesteps ({big_n})")
        # floor(x + 0.5) keeps neighbours distinct when they are >= 1 apart (round-half-even would not).
        grid = torch.floor(torch.linspace(big_n - 1, 0, n, dtype=torch.float64) + 0.5)
        self.num_inference_steps = n
        self.timesteps = grid.to(dtype=torch.int64, device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | int | None = None) -> torch.Tensor:
        """Identity: the network takes the corrupted sample as it is."""
        return sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int | float
    ) -> torch.Tensor:
        """Corrupt clean samples: ``C_t x_0 + s_t * noise`` with ``t = timesteps / (N - 1)``.

        Args:
            original_samples (`torch.Tensor` of shape `(batch, channels, H, W)`): clean images ``x_0``.
            noise (`torch.Tensor`, same shape): standard-normal noise.
            timesteps (`torch.Tensor` of shape `(batch,)` or a scalar): model-scale timesteps in ``[0, N-1]``.

        Returns:
            `torch.Tensor`: the corrupted samples.
        """
        x0 = self.corruption.check_images(original_samples, "original_samples")
        if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be a tensor of original_samples' shape {tuple(x0.shape)}, got {got}")
        t = self.continuous_time(timesteps).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x0.shape[0])
        if t.shape[0] != x0.shape[0]:
            raise ValueError(f"timesteps must be a scalar or have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        return self.corruption.corrupt(x0, t.to(device=x0.device, dtype=x0.dtype), noise)

    def initial_sample(
        self,
        shape: Sequence[int],
        *,
        reference: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw from the most corrupted distribution ``C_1 x_0 + s_1 eta`` (the sampling loop's start).

        Args:
            shape (`(batch, channels, H, W)`): output shape; ``H x W`` must be the scheduler's image size.
            reference (`torch.Tensor` of shape `(M, channels, H, W)`, optional): clean images (as the network
                sees them). Each sample blurs a uniformly drawn reference by ``blur_sigma(1)``: exact for
                the reference set at any ``blur_sigma_max``. Without it the stored mean-colour prior is used.
            generator (`torch.Generator` or a list of them, optional): randomness source.
            device (`str` or `torch.device`, optional): output device (defaults to ``reference``'s, or CPU).
            dtype (`torch.dtype`, defaults to `torch.float32`): output dtype.

        Returns:
            `torch.Tensor` of shape ``shape``.
        """
        if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 4:
            raise ValueError(f"shape must be (batch, channels, height, width), got {shape!r}")
        batch, channels = check_int("shape[0]", shape[0]), check_int("shape[1]", shape[1])
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        image_size = self.corruption.image_size
        if tuple(shape[2:]) != image_size:
            raise ValueError(f"shape's image size {tuple(shape[2:])} differs from the scheduler's {image_size}")
        ones = torch.ones(batch, dtype=torch.float64)
        if reference is not None:
            self.corruption.check_images(reference, "reference")
            if reference.shape[1] != channels:
                raise ValueError(f"reference has {reference.shape[1]} channels, shape asks for {channels}")
            device = reference.device if device is None else torch.device(device)
            count = reference.shape[0]
            if isinstance(generator, list):
                if len(generator) != batch:
                    raise ValueError(f"a list of generators must have one per sample ({batch}), got {len(generator)}")
                idx = torch.cat([torch.randint(count, (1,), generator=g, device=g.device).cpu() for g in generator])
            else:
                gen_device = generator.device if generator is not None else torch.device("cpu")
                idx = torch.randint(count, (batch,), generator=generator, device=gen_device).cpu()
            x0 = reference.detach()[idx.to(reference.device)].to(device=device, dtype=dtype)
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=dtype)
            return self.corruption.corrupt(x0, ones.to(device=device, dtype=dtype), noise)
        if self._prior is None:
            raise ValueError(
                "no starting distribution: pass reference=<clean training images>, or fit the mean-colour prior "
                "with scheduler.set_prior(images) / SoftDiffusionScheduler.from_data(images)"
            )
        residual = self.corruption.max_blur_residual()
        if residual > _MAX_PRIOR_RESIDUAL:
            raise ValueError(
                f"blur_sigma_max keeps {residual:.1%} of the lowest frequency at t = 1, so the most corrupted level "
                f"is not a flat colour; pass reference=<clean training images> (or raise blur_sigma_max to about "
                f"the image size)"
            )
        mean, root = self._prior
        if mean.numel() != channels:
            raise ValueError(f"the prior has {mean.numel()} channels, shape asks for {channels}")
        device = torch.device("cpu") if device is None else torch.device(device)
        z = randn_tensor((batch, channels), generator=generator, device=device, dtype=torch.float64)
        colour = (mean.to(device) + z @ root.to(device).T).to(dtype)
        noise = randn_tensor(tuple(shape), generator=generator, device=device, dtype=dtype)
        s1 = self.corruption.noise_std(ones.to(device=device, dtype=dtype))
        return colour[:, :, None, None] + s1[:, None, None, None] * noise

    def _index(self, timestep: torch.Tensor | int | float) -> int:
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single value, got shape {tuple(timestep.shape)}")
            value = float(timestep.reshape(-1)[0])
        elif isinstance(timestep, (int, float)) and not isinstance(timestep, bool):
            value = float(timestep)
        else:
            raise TypeError(f"timestep must be a number or a one-element tensor, got {type(timestep).__name__}")
        matches = torch.nonzero(self.timesteps.cpu().to(torch.float64) == value).flatten()
        if not math.isfinite(value) or len(matches) == 0:
            raise ValueError(f"timestep {value} is not in scheduler.timesteps {self.timesteps.tolist()}")
        return int(matches[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | int,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> SoftDiffusionSchedulerOutput | tuple:
        """Move ``sample`` from ``timestep`` to the next entry of ``timesteps``.

        Args:
            model_output (`torch.Tensor`): the network's ``x_0`` estimate at ``(sample, timestep)``.
            timestep (`int` or one-element `torch.Tensor`): the current entry of ``timesteps``.
            sample (`torch.Tensor` of shape `(batch, channels, H, W)`): the current corrupted sample.
            generator (`torch.Generator` or a list of them, optional): noise source (a list: one per sample).
            return_dict (`bool`, defaults to `True`): return a :class:`SoftDiffusionSchedulerOutput` or a tuple.
            **kwargs: ignored (Diffusers' DDIM pipeline passes ``eta`` and ``use_clipped_model_output``).

        Returns:
            :class:`SoftDiffusionSchedulerOutput` or ``(prev_sample, pred_original_sample)``. On the last
            entry (``timestep == 0``) ``prev_sample`` is the clean estimate.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        for name, value in (("model_output", model_output), ("sample", sample)):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(value).__name__}")
        self.corruption.check_images(sample, "sample")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}"
            )
        index = self._index(timestep)
        x0_hat = model_output.to(sample.dtype)
        if self.config.clip_sample:
            x0_hat = x0_hat.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if index == len(self.timesteps) - 1:
            prev = x0_hat
        else:
            batch = sample.shape[0]
            t = self.continuous_time(self.timesteps[index]).to(device=sample.device, dtype=sample.dtype).expand(batch)
            t_next = self.continuous_time(self.timesteps[index + 1]).to(device=sample.device, dtype=sample.dtype)
            prev = SOFT_SAMPLERS[self.config.sampler](
                self.corruption, x0_hat, sample, t, t_next.expand(batch), generator=generator
            ).prev_sample
        if not return_dict:
            return prev, x0_hat
        return SoftDiffusionSchedulerOutput(prev_sample=prev, pred_original_sample=x0_hat)
