"""``--corruption gaussian``: score SDE training (VE / VP / sub-VP) and a :class:`ScoreSdePipeline` export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sde_diffusers.losses import ddpm_loss, denoising_score_matching_loss, sample_time, smld_loss
from sde_diffusers.parameterization import make_score_fn
from sde_diffusers.pipelines import ScoreSdePipeline
from sde_diffusers.schedulers import SubVPSDEScheduler, VESDEScheduler, VPSDEScheduler

from ..config import SDE_TYPES, TrainingConfig, TrainingInputError
from .base import TrainingCorruption

__all__ = ["GaussianTraining"]

_SDE_NAMES = {"ve": "VE", "vp": "VP", "subvp": "sub-VP"}
_LOSS_NAMES = {
    "dsm": "continuous denoising score matching",
    "smld": "SMLD (NCSN) discrete loss",
    "ddpm": "DDPM discrete loss",
}


def _max_pairwise_distance(data: Any, limit: int = 2000) -> float:
    """Largest L2 distance between two training images in [-1, 1] (Song & Ermon 2020's sigma_max rule)."""
    idx = torch.linspace(0, len(data) - 1, min(limit, len(data))).round().long()
    x, _ = data.batch(idx)
    flat = x.reshape(len(idx), -1).double()
    return float(torch.cdist(flat, flat).max())


class GaussianTraining(TrainingCorruption):
    """Denoising score matching (continuous, or the SMLD / DDPM discrete losses) of a VE, VP or sub-VP SDE."""

    name = "gaussian"
    own_options = {
        "sde": "the SDE",
        "sigma_min": "a VE SDE parameter",
        "sigma_max": "a VE SDE parameter",
        "beta_min": "a VP / sub-VP SDE parameter",
        "beta_max": "a VP / sub-VP SDE parameter",
        "loss": "the score-matching loss of an SDE",
        "likelihood_weighting": "the g(t)^2 weight of an SDE",
        "train_eps": "the smallest SDE time of the continuous loss",
        "predictor": "the predictor-corrector sampler",
        "corrector": "the predictor-corrector sampler",
        "snr": "the predictor-corrector sampler",
        "eval_bpd_images": "bits/dim through the probability-flow ODE",
        "eval_split": "bits/dim through the probability-flow ODE",
        "eval_bpd_tolerance": "bits/dim through the probability-flow ODE",
    }
    pipeline_class = ScoreSdePipeline
    model_card = "score_sde"
    has_likelihood = True

    def check(self, cfg: TrainingConfig, preset: Any) -> dict[str, Any]:
        sde = preset.sde_types[0] if cfg.sde is None else cfg.sde
        if sde not in SDE_TYPES:
            raise TrainingInputError(f"--sde must be one of {SDE_TYPES}, got {sde!r}")
        if sde not in preset.sde_types:
            raise TrainingInputError(
                f"--model_preset {cfg.model_preset!r} is for the {'/'.join(preset.sde_types)} SDE, not {sde!r}; "
                f"use an {'ncsnpp' if sde == 've' else 'ddpmpp'}-* preset"
            )
        if cfg.loss == "smld" and sde != "ve":
            raise TrainingInputError("--loss smld (NCSN's discrete loss) needs --sde ve")
        if cfg.loss == "ddpm" and sde != "vp":
            raise TrainingInputError("--loss ddpm (the discrete DDPM loss) needs --sde vp")
        if cfg.likelihood_weighting and cfg.loss != "dsm":
            raise TrainingInputError("--likelihood_weighting applies to --loss dsm only")
        # score_sde's configs: half the sum over pixels for VE, the mean for VP / sub-VP.
        reduce_mean = sde != "ve" if cfg.reduce_mean is None else cfg.reduce_mean
        return {"sde": sde, "reduce_mean": reduce_mean}

    def resolve_with_data(self, cfg: TrainingConfig, data: Any) -> dict[str, Any]:
        if cfg.sde == "ve" and cfg.sigma_max is None:
            # Song & Ermon (2020), technique 1: sigma_max at least the largest distance between training points.
            return {"sigma_max": float(f"{_max_pairwise_distance(data):.4g}")}
        return {}

    def build_scheduler(self, cfg: TrainingConfig, data: Any, resume_dir: Path | None) -> Any:
        sampling = {k: getattr(cfg, k) for k in ("predictor", "corrector", "snr") if getattr(cfg, k) is not None}
        n = cfg.num_train_timesteps
        try:
            if cfg.sde == "ve":
                return VESDEScheduler(
                    num_train_timesteps=n, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, **sampling
                )
            cls = VPSDEScheduler if cfg.sde == "vp" else SubVPSDEScheduler
            # The scheduler keeps DDPM-style betas: beta_min = N * beta_start, beta_max = N * beta_end.
            return cls(num_train_timesteps=n, beta_start=cfg.beta_min / n, beta_end=cfg.beta_max / n, **sampling)
        except (ValueError, TypeError) as err:
            raise TrainingInputError(f"invalid sampler options (--predictor/--corrector/--snr): {err}") from err

    def describe(self, cfg: TrainingConfig) -> str:
        return f"the {cfg.sde} SDE"

    def sample_times(
        self, cfg: TrainingConfig, scheduler: Any, batch: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        if cfg.loss == "dsm":
            return sample_time(scheduler.sde, batch, cfg.train_eps, generator=generator, device=device)
        return torch.randint(0, cfg.num_train_timesteps, (batch,), generator=generator, device=device)

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
        kwargs = {"class_labels": y} if y is not None else {}
        sde = scheduler.sde
        if cfg.loss == "ddpm":
            return ddpm_loss(model, sde, x, reduce_mean=cfg.reduce_mean, timesteps=times, noise=noise, **kwargs)
        score_fn = make_score_fn(model, sde, raw_model.prediction_type, raw_model.time_input, **kwargs)
        if cfg.loss == "smld":
            return smld_loss(score_fn, sde, x, reduce_mean=cfg.reduce_mean, timesteps=times, noise=noise)
        return denoising_score_matching_loss(
            score_fn,
            sde,
            x,
            eps=cfg.train_eps,
            reduce_mean=cfg.reduce_mean,
            likelihood_weighting=cfg.likelihood_weighting,
            t=times,
            noise=noise,
        )

    def card_fields(self, cfg: TrainingConfig, scheduler: Any, final_loss: float | None) -> dict[str, Any]:
        params = scheduler.sde.config
        described = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        loss_text = _LOSS_NAMES[cfg.loss]
        if cfg.likelihood_weighting:
            loss_text += " with likelihood weighting g(t)^2"
        return {
            "model_name": f"score-sde-{cfg.sde}-{cfg.model_preset}",
            "sde": f"{_SDE_NAMES[cfg.sde]} SDE ({described})",
            "final_loss": "not measured" if final_loss is None else f"{final_loss:.4g} ({loss_text})",
        }

    def commit_label(self, cfg: TrainingConfig) -> str:
        return f"{cfg.sde} SDE"

    def public_config(self, values: dict[str, Any], foreign: dict[str, str]) -> dict[str, Any]:
        # Parameters of the other SDE family do not apply either.
        unused = ("beta_min", "beta_max") if values.get("sde") == "ve" else ("sigma_min", "sigma_max")
        return {k: v for k, v in super().public_config(values, foreign).items() if k not in unused}
