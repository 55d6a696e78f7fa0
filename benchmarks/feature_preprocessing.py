"""Cost of DINOv2/CLIP preprocessing: transformers' image processor (PIL, one image at a time) vs our batched torch.

For each input size the same uint8 images go through

* ``processor``: ``BitImageProcessor`` (transformers' PIL backend, as used without torchvision) on PIL images;
* ``ours (uint8)``: :class:`ImagePreprocessing` with Pillow's 8-bit arithmetic (the default; must give the
  processor's tensor to float precision, checked in the same run);
* ``ours (float)``: :class:`ImagePreprocessing` with ``arithmetic="float"``;
* ``interpolate``: EDM2's fast path, ``F.interpolate(bicubic, antialias=True)`` plus normalisation (reference).

Protocol: FD_DINOv2's (whole image to 224x224, bicubic, ImageNet statistics). Best of ``--repeats`` wall times, one
torch thread by default. Prints a table and writes ``benchmarks/results/feature_preprocessing.json``.

    python benchmarks/feature_preprocessing.py [--num-images 256] [--sizes 32 64 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _report import write_report

from sde_diffusers.evaluation.image_preprocessing import IMAGENET_MEAN, IMAGENET_STD
from sde_diffusers.evaluation.transformers_features import fd_dinov2_preprocessing

RESULTS = Path(__file__).resolve().parent / "results"


def _images(num: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random crops of skimage's astronaut photograph, resized to ``size`` (uint8, NCHW)."""
    from PIL import Image
    from skimage import data

    photo = data.astronaut()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        side = int(rng.integers(96, 512))
        top, left = rng.integers(0, 512 - side + 1, size=2)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(crop))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _best(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def _measure(size: int, args: argparse.Namespace, processor, prep_u8, prep_f, mean, std) -> dict:
    from PIL import Image

    images = _images(args.num_images, size)
    pil = [Image.fromarray(a) for a in images.permute(0, 2, 3, 1).numpy()]
    on_device = images.to(args.device)
    prep_u8(on_device[:2])  # build and cache the resampling matrices outside the timing
    t_proc, ref = _best(lambda: processor(images=pil, return_tensors="pt")["pixel_values"], args.repeats)
    t_u8, got = _best(lambda: prep_u8(on_device), args.repeats)
    t_f, got_f = _best(lambda: prep_f(on_device), args.repeats)

    def edm2():
        x = F.interpolate(on_device.float(), size=(224, 224), mode="bicubic", antialias=True)
        return (x / 255 - mean) / std

    t_int, _ = _best(edm2, args.repeats)
    return {
        "input_size": size,
        "num_images": args.num_images,
        "processor_s": t_proc,
        "ours_uint8_s": t_u8,
        "ours_float_s": t_f,
        "interpolate_s": t_int,
        "speedup_uint8_vs_processor": t_proc / t_u8,
        "max_abs_diff_uint8_vs_processor": float((got.cpu() - ref).abs().max()),
        "mean_abs_diff_float_vs_uint8_levels": float(((got_f - got).abs() * std * 255).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "feature_preprocessing.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import BitImageProcessor

    prep_u8, prep_f = fd_dinov2_preprocessing("uint8"), fd_dinov2_preprocessing("float")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the PIL-backend fallback notice
        processor = BitImageProcessor(**prep_u8.to_processor_config())
    mean = torch.tensor(IMAGENET_MEAN, device=args.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=args.device).view(1, 3, 1, 1)

    rows = [_measure(size, args, processor, prep_u8, prep_f, mean, std) for size in args.sizes]

    header = (
        f"{'input':>6} {'processor s':>12} {'ours uint8 s':>13} {'ours float s':>13} {'interpolate s':>14} "
        f"{'speed-up':>9} {'max |diff|':>11}"
    )
    print(
        f"FD_DINOv2 preprocessing of {args.num_images} images to 224x224, device {args.device}, "
        f"{args.threads} thread(s), best of {args.repeats}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['input_size']:>6} {r['processor_s']:>12.3f} {r['ours_uint8_s']:>13.3f} {r['ours_float_s']:>13.3f} "
            f"{r['interpolate_s']:>14.3f} {r['speedup_uint8_vs_processor']:>8.1f}x "
            f"{r['max_abs_diff_uint8_vs_processor']:>11.2e}"
        )
    report = {
        "rows": rows,
        "settings": vars(args),
        "environment": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "machine": platform.machine(),
            "date": datetime.date.today().isoformat(),
        },
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
