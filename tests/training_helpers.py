"""What the training tests share: the smallest useful configuration."""

from __future__ import annotations

from sde_diffusers.training import TrainingConfig


def tiny_config(output_dir, **overrides) -> TrainingConfig:
    """Four steps of a tiny DDPM++ on the digits, no checkpoints, four sample images; ``overrides`` win."""
    values = dict(
        dataset_name="digits",
        model_preset="ddpmpp-tiny",
        train_batch_size=16,
        max_train_steps=4,
        learning_rate=1e-3,
        lr_warmup_steps=2,
        ema_decay=0.99,
        output_dir=str(output_dir),
        report_to="none",
        progress_bar=False,
        checkpointing_steps=0,
        save_final_checkpoint=False,
        logging_steps=2,
        num_sample_images=4,
        num_inference_steps=3,
    )
    values.update(overrides)
    return TrainingConfig(**values)
