"""``--corruption blur``: Soft Diffusion (Daras et al. 2022) training and a :class:`SoftDiffusionPipeline` export.

A DDPM++ network predicts ``x_0`` of the blur + noise corruption ``x_t = C_t x_0 + s_t eta``; the levels are
fitted to the training images (:meth:`~sde_diffusers.schedulers.SoftDiffusionScheduler.from_data`, spaced evenly
in Wasserstein-2 distance) and the loss is Soft Score Matching
(:func:`~sde_diffusers.losses.soft_score_matching_loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sde_diffusers.losses import soft_score_matching_loss
from sde_diffusers.pipelines import SoftDiffusionPipeline
from sde_diffusers.schedulers import SoftDiffusionScheduler

from ..config import TrainingConfig, TrainingInputError
from .base import TrainingCorruption

__all__ = ["BlurTraining"]

# Training images the schedule and prior are fitted to (evenly spaced through the data set: deterministic).
_FIT_IMAGES = 2000
_SCHEDULER_DIR = "scheduler"
# Why a Soft Diffusion model card (and log) has no bits/dim.
NO_BITS_PER_DIM = (
    "not defined for blur + noise corruption (bits/dim integrates the probability-flow ODE of a "
    "Gaussian-noise SDE, which this corruption process does not have)"
)
_WEIGHTS = {"score": "1 / s_t^2", "uniform": "1"}

# Specific reasons for refusing options of the Gaussian SDEs; the others get the generic message.
_REFUSALS = (
    (
        ("sde",),
        "--sde {sde} does not apply to --corruption blur: its corruption is the blur + noise schedule fitted to the "
        "training images, not an SDE; leave --sde out",
    ),
    (
        ("loss",),
        "--loss {loss} is a discrete loss of the Gaussian SDEs; --corruption blur trains with Soft Score Matching "
        "(leave --loss out; --soft_weighting picks its weight)",
    ),
    (
        ("likelihood_weighting",),
        "--likelihood_weighting (the g(t)^2 weight of an SDE) does not apply to --corruption blur; use "
        "--soft_weighting score (1 / s_t^2) or uniform",
    ),
    (
        ("predictor", "corrector", "snr"),
        "{flags} configure the predictor-corrector sampler of the Gaussian SDEs; --corruption blur exports a "
        "SoftDiffusionScheduler (the momentum sampler)",
    ),
    (
        ("eval_bpd_images", "eval_split", "eval_bpd_tolerance"),
        "{flags}: bits/dim is not defined for --corruption blur (it integrates the probability-flow ODE of a "
        "Gaussian-noise SDE, and blur + noise corruption has none); leave it out",
    ),
)


class BlurTraining(TrainingCorruption):
    """Soft Score Matching of an ``x_0``-predicting DDPM++ under blur + noise levels fitted to the data."""

    name = "blur"
    own_options = {"soft_weighting": "the weight of Soft Score Matching"}
    pipeline_class = SoftDiffusionPipeline
    model_card = "soft_diffusion"

    def refusal(self, given: dict[str, Any], foreign: dict[str, str]) -> str:
        for names, template in _REFUSALS:
            flags = [f"--{k}" for k in names if k in given]
            if flags:
                return template.format(flags="/".join(flags), **{k: given.get(k) for k in names})
        return super().refusal(given, foreign)

    def check(self, cfg: TrainingConfig, preset: Any) -> dict[str, Any]:
        if preset.model_class != "DDPMppModel":
            raise TrainingInputError(
                f"--corruption blur needs a DDPM++ preset (ddpmpp-*): the network predicts x_0 from the t * (N - 1) "
                f"timestep, while {cfg.model_preset!r} builds an {preset.model_class}, which takes the noise level "
                "and divides its output by it (a score parameterisation)"
            )
        if cfg.class_conditional:
            raise TrainingInputError(
                "--class_conditional is not supported with --corruption blur (SoftDiffusionPipeline is unconditional)"
            )
        if cfg.num_inference_steps > cfg.num_train_timesteps:
            raise TrainingInputError(
                f"--num_inference_steps ({cfg.num_inference_steps}) must be <= --num_train_timesteps "
                f"({cfg.num_train_timesteps}) with --corruption blur (the sampler visits a subset of the trained "
                "levels)"
            )
        # Mean over pixels by default: the loss is on the scale of a per-pixel squared error.
        return {"reduce_mean": True if cfg.reduce_mean is None else cfg.reduce_mean}

    def build_scheduler(self, cfg: TrainingConfig, data: Any, resume_dir: Path | None) -> SoftDiffusionScheduler:
        """The levels and starting prior: from the checkpoint when resuming, else fitted to the data.

        A resumed run reads the schedule its weights were trained with (saved with every checkpoint), so it
        continues exactly even if the fit would now give other numbers.
        """
        if resume_dir is not None and (resume_dir / _SCHEDULER_DIR).is_dir():
            return SoftDiffusionScheduler.from_pretrained(str(resume_dir / _SCHEDULER_DIR))
        idx = torch.linspace(0, len(data) - 1, min(_FIT_IMAGES, len(data))).round().long()
        images, _ = data.batch(idx, dtype=torch.float64)
        try:
            return SoftDiffusionScheduler.from_data(images, num_train_timesteps=cfg.num_train_timesteps)
        except (ValueError, TypeError) as err:
            raise TrainingInputError(
                f"--corruption blur: cannot fit the corruption schedule to the data: {err}"
            ) from err

    def describe(self, cfg: TrainingConfig) -> str:
        return f"blur + noise corruption ({cfg.num_train_timesteps} W2-spaced levels, Soft Score Matching)"

    def sample_times(
        self, cfg: TrainingConfig, scheduler: Any, batch: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        # t ~ U(0, 1): the least corrupted level has noise too.
        return scheduler.corruption.sample_time(batch, generator=generator, device=device)

    def loss(
        self,
        cfg: TrainingConfig,
        scheduler: Any,
        model: torch.nn.Module,
        raw_model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None,
        times: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        # The network output is x_0's estimate; it sees t on the scheduler's t * (N - 1) timestep scale.
        return soft_score_matching_loss(
            model, x, scheduler, t=times, noise=noise, weighting=cfg.soft_weighting, reduce_mean=cfg.reduce_mean
        )

    def save_with_checkpoint(self, scheduler: Any, folder: Path) -> list[str]:
        # The fitted levels and prior the weights are trained for: a resumed run reads them back.
        scheduler.save_pretrained(str(folder / _SCHEDULER_DIR))
        return [f"{_SCHEDULER_DIR}/scheduler_config.json"]

    def card_fields(self, cfg: TrainingConfig, scheduler: Any, final_loss: float | None) -> dict[str, Any]:
        corruption = scheduler.corruption
        blur, noise = corruption.blur_sigmas, corruption.noise_stds
        text = (
            f"DCT Gaussian blur {float(blur[0]):.3g} to {float(blur[-1]):.3g} px and noise std {float(noise[0]):.3g} "
            f"to {float(noise[-1]):.3g}, {len(blur)} levels spaced evenly in Wasserstein-2 distance (fitted to the "
            f"training images); Soft Score Matching with weight {_WEIGHTS[cfg.soft_weighting]}; "
            f"`{scheduler.config.sampler}` sampler"
        )
        return {
            "model_name": f"soft-diffusion-{cfg.model_preset}",
            "corruption": text,
            "final_loss": "not measured" if final_loss is None else f"{final_loss:.4g} (Soft Score Matching)",
        }

    def bits_per_dim_note(self) -> str | None:
        return NO_BITS_PER_DIM

    def commit_label(self, cfg: TrainingConfig) -> str:
        return "soft diffusion"
