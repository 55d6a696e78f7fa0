"""What a run leaves behind: sample grids, held-out bits/dim, the exported pipeline with its model card, the Hub
upload and ``train_summary.json``.

The pipeline class and the model card template are the corruption strategy's
(:attr:`~sde_diffusers.training.corruptions.TrainingCorruption.pipeline_class`, ``model_card``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import make_image_grid
from PIL import Image, ImageOps

from sde_diffusers.hub_utils import push_pipeline_to_hub, save_model_card
from sde_diffusers.likelihood import log_likelihood

from .checkpointing import write_text_atomic
from .config import TrainingResult
from .corruptions import foreign_options
from .plan import TrainingPlan

__all__ = ["EMAWeights", "sample_grid", "bits_per_dim", "export_pipeline", "push_to_hub", "write_summary"]

logger = logging.getLogger("sde_diffusers.training")


class EMAWeights:
    """Context manager: the model holds the EMA weights inside, its training weights again after."""

    def __init__(self, ema: Any, model: torch.nn.Module) -> None:
        self.ema, self.model = ema, model

    def __enter__(self) -> torch.nn.Module:
        if self.ema is not None:
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
        return self.model

    def __exit__(self, *exc: object) -> None:
        if self.ema is not None:
            self.ema.restore(self.model.parameters())


def _grid_shape(n: int) -> tuple[int, int]:
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def sample_grid(model: torch.nn.Module, plan: TrainingPlan, seed: int) -> Image.Image:
    """A grid of ``num_sample_images`` samples from ``model`` (its current weights) with the strategy's pipeline."""
    cfg = plan.config
    pipeline = plan.corruption.pipeline_class(unet=model, scheduler=plan.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    kwargs = {}
    if cfg.class_conditional:
        kwargs["class_labels"] = torch.arange(cfg.num_sample_images) % plan.data.num_classes
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            images = pipeline(
                batch_size=cfg.num_sample_images,
                num_inference_steps=cfg.num_inference_steps,
                generator=generator,
                output_type="pil",
                **kwargs,
            ).images
    finally:
        model.train(was_training)
    # Small images are enlarged (nearest neighbour) and framed in grey so that tiles touching their edges (digits)
    # stay apart in the grid.
    scale = max(1, 64 // images[0].width)
    images = [
        ImageOps.expand(
            im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST),
            border=max(1, scale // 4),
            fill=128,
        )
        for im in images
    ]
    rows, cols = _grid_shape(len(images))
    return make_image_grid(images, rows=rows, cols=cols)


def bits_per_dim(model: torch.nn.Module, plan: TrainingPlan, device: torch.device) -> tuple[float, float]:
    """Mean bits/dim of ``model`` on the held-out images (dequantized, probability-flow ODE) and its standard error."""
    cfg, data = plan.config, plan.eval_data
    count = min(cfg.eval_bpd_images, len(data))
    idx = torch.linspace(0, len(data) - 1, count).round().long()
    x, y = data.batch(idx, device=device)
    kwargs = {"model_kwargs": {"class_labels": y}} if cfg.class_conditional else {}
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    out = log_likelihood(
        model,
        plan.sde,
        x,
        dequantize=True,
        data_range=(-1.0, 1.0),
        num_levels=256,
        generator=generator,
        rtol=cfg.eval_bpd_tolerance,
        atol=cfg.eval_bpd_tolerance,
        prediction_type=model.prediction_type,
        time_input=model.time_input,
        **kwargs,
    )
    bpd = out.bits_per_dim.double().cpu()
    stderr = float(bpd.std() / math.sqrt(count)) if count > 1 else float("nan")
    return float(bpd.mean()), stderr


def public_config(plan: TrainingPlan) -> dict[str, Any]:
    """The options worth publishing: no secrets, no local paths, no options of another corruption or SDE family."""
    corruption = plan.corruption
    values = corruption.public_config(plan.config.to_dict(public=True), foreign_options(corruption))
    return {k: v for k, v in values.items() if not k.startswith(("hub_", "push_"))}


def _model_card_fields(
    plan: TrainingPlan, model: torch.nn.Module, result: TrainingResult, bpd_text: str | None
) -> dict[str, Any]:
    cfg = plan.config
    n_params = sum(p.numel() for p in model.parameters())
    c, h, w = plan.data.images.shape[1:]
    architecture = (
        f"`{type(model).__name__}` (preset `{cfg.model_preset}`), {n_params:,} parameters, {c}x{h}x{w} images"
        + (f", class-conditional ({plan.data.num_classes} classes)" if cfg.class_conditional else "")
        + (f", config overrides `{json.dumps(cfg.model_config)}`" if cfg.model_config else "")
    )
    fields = plan.corruption.card_fields(cfg, plan.scheduler, result.final_loss)
    if cfg.hub_model_id:
        fields["model_name"] = cfg.hub_model_id.split("/")[-1]
    return dict(
        fields,
        repo_id=cfg.hub_model_id or "<path to this folder>",
        pipeline_class=plan.corruption.pipeline_class.__name__,
        architecture=architecture,
        dataset=plan.data.description,
        training_config=public_config(plan),
        steps=result.global_step,
        bits_per_dim=plan.corruption.bits_per_dim_note() or bpd_text,
        sample_grid="samples.png",
        license=cfg.license,
    )


def _replace_dir(staging: Path, final: Path) -> None:
    """Move a fully written folder into place; an existing one is moved aside first, then deleted."""
    trash = None
    if final.exists():
        trash = final.with_name(f".old-{final.name}.{os.getpid()}")
        os.replace(final, trash)
    os.replace(staging, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def export_pipeline(
    plan: TrainingPlan, model: torch.nn.Module, grid: Image.Image, result: TrainingResult, bpd_text: str | None
) -> Path:
    """Save ``model`` (normally holding the EMA weights) as the strategy's pipeline with a model card and the sample
    grid in ``<output_dir>/pipeline`` (written aside, then moved into place)."""
    staging = plan.output_dir / ".tmp-pipeline"
    if staging.exists():
        shutil.rmtree(staging)
    pipeline = plan.corruption.pipeline_class(unet=model, scheduler=plan.scheduler)
    pipeline.save_pretrained(str(staging))
    grid.save(staging / "samples.png")
    save_model_card(staging, plan.corruption.model_card, **_model_card_fields(plan, model, result, bpd_text))
    final = plan.output_dir / "pipeline"
    _replace_dir(staging, final)
    return final


def push_to_hub(plan: TrainingPlan, folder: Path, result: TrainingResult) -> str | None:
    """Upload the exported ``folder`` to ``hub_model_id``; the commit URL."""
    cfg = plan.config
    commit = push_pipeline_to_hub(
        folder,
        cfg.hub_model_id,
        token=plan.hub_token,
        private=cfg.hub_private,
        commit_message=f"sde-diffusers: {cfg.model_preset}, {plan.corruption.commit_label(cfg)}, "
        f"{result.global_step} steps",
    )
    return getattr(commit, "commit_url", None)


def write_summary(plan: TrainingPlan, result: TrainingResult) -> None:
    """``<output_dir>/train_summary.json``: the result without the loss history, and the options (no secrets)."""
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "loss_history"}
    summary["config"] = plan.config.to_dict()
    write_text_atomic(plan.output_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
