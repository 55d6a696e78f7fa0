"""Example images of every score-SDE pipeline from a trained model, for the README.

Given a saved pipeline folder (or Hub repo id) and the built-in data set it was trained on, writes into ``--out``:

* ``gallery_samples.png``: unconditional samples, or one row per class for a class-conditional model (or a model
  with a classifier);
* ``gallery_inpainting.png`` (1-channel or 3-channel models): for held-out test images with their lower half
  masked, the original, the masked input, then completions by the paper's replacement method and by Tweedie
  likelihood guidance;
* ``gallery_colorization.png`` (3-channel models): the original, its grey level, then colorizations by both
  methods.

Run: ``python benchmarks/pipeline_gallery.py MODEL_DIR --data digits [--steps 500] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import os

import torch
from diffusers.utils import make_image_grid
from PIL import Image

from sde_diffusers.evaluation.datasets import load_builtin
from sde_diffusers.pipelines import (
    ScoreSdeColorizationPipeline,
    ScoreSdeInpaintPipeline,
    ScoreSdePipeline,
    SDEDiffusionPipeline,
)
from sde_diffusers.pipelines.pipeline_score_sde_colorization import grey_level


def _tile(images: list[Image.Image], rows: int, cols: int, scale: int) -> Image.Image:
    images = [
        im.convert("RGB").resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in images
    ]
    return make_image_grid(images, rows=rows, cols=cols)


def _to_pil(x: torch.Tensor) -> Image.Image:
    array = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="saved pipeline folder or Hub repo id")
    parser.add_argument(
        "--data", default="digits", help="built-in data set of held-out inputs: digits, mnist, cifar10"
    )
    parser.add_argument("--data-root", default=None, help="CIFAR-10 folder (for --data cifar10)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--examples", type=int, default=4, help="held-out images to inpaint / colorize")
    parser.add_argument("--completions", type=int, default=4, help="results per held-out image and method")
    parser.add_argument("--scale", type=int, default=0, help="pixel upscaling of the PNGs (default: to ~48 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    loaded = SDEDiffusionPipeline.from_pretrained(args.model_dir)
    parts = {
        "unet": loaded.unet,
        "scheduler": loaded.scheduler,
        "classifier": getattr(loaded, "classifier", None),
    }
    images, labels = load_builtin(args.data, "test", root=args.data_root)
    channels, size = loaded.unet.config.in_channels, images.shape[-1]
    scale = args.scale or max(1, 48 // size)
    os.makedirs(args.out, exist_ok=True)
    gen = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731

    # Samples: one row per class when the model can be conditioned on classes.
    pipe = ScoreSdePipeline(**parts)
    n_classes = pipe.num_unet_classes or pipe.num_classifier_classes
    if n_classes:
        cols = 8
        class_labels = torch.arange(n_classes).repeat_interleave(cols)
        out = pipe(class_labels=class_labels, num_inference_steps=args.steps, generator=gen()).images
        grid = _tile(out, n_classes, cols, scale)
    else:
        out = pipe(batch_size=64, num_inference_steps=args.steps, generator=gen()).images
        grid = _tile(out, 8, 8, scale)
    grid.save(os.path.join(args.out, "gallery_samples.png"))
    print(f"wrote {os.path.join(args.out, 'gallery_samples.png')}")

    # Inpainting: the lower half of held-out images.
    pipe = ScoreSdeInpaintPipeline(**parts)
    mask = torch.zeros(1, size, size)
    mask[:, size // 2 :] = 1.0
    rows = []
    for i in range(args.examples):
        original = images[i]
        if original.shape[0] != channels:
            break
        masked = original * (1 - mask) + 0.5 * mask
        row = [_to_pil(original), _to_pil(masked)]
        for method in ("replacement", "guidance"):
            kw = {"class_labels": int(labels[i])} if pipe.num_unet_classes else {}
            row += pipe(
                original,
                mask,
                batch_size=args.completions,
                num_inference_steps=args.steps,
                method=method,
                generator=gen(),
                **kw,
            ).images
        rows.append(row)
    if rows:
        _tile([im for row in rows for im in row], len(rows), len(rows[0]), scale).save(
            os.path.join(args.out, "gallery_inpainting.png")
        )
        print(
            f"wrote {os.path.join(args.out, 'gallery_inpainting.png')} (original | input | replacement x "
            f"{args.completions} | guidance x {args.completions})"
        )

    # Colorization: colour models only.
    if channels == 3:
        pipe = ScoreSdeColorizationPipeline(**parts)
        rows = []
        for i in range(args.examples):
            grey = grey_level(images[i : i + 1])[0]
            row = [_to_pil(images[i]), _to_pil(grey.expand(3, -1, -1))]
            for method in ("replacement", "guidance"):
                row += pipe(
                    grey,
                    batch_size=args.completions,
                    num_inference_steps=args.steps,
                    method=method,
                    generator=gen(),
                ).images
            rows.append(row)
        _tile([im for row in rows for im in row], len(rows), len(rows[0]), scale).save(
            os.path.join(args.out, "gallery_colorization.png")
        )
        print(f"wrote {os.path.join(args.out, 'gallery_colorization.png')}")


if __name__ == "__main__":
    main()
