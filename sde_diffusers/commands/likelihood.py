"""``sde-diffusers likelihood MODEL_DIR --data DATA``: bits per dimension of a data set under a saved model.

MODEL_DIR is a pipeline folder in the Diffusers layout (``model_index.json``, a ``unet`` model folder and a
``scheduler`` folder; ours and plain Diffusers ones such as a ``DDPMPipeline``), or a bare model folder
(``config.json`` with ``_class_name``) together with ``--sde`` or a ``scheduler/`` subfolder. The forward SDE and
the network's prediction type come from the scheduler config (a DDPM-style config gives the VP SDE with
``beta_min = N beta_start``, ``beta_max = N beta_end``).

DATA is ``digits`` or ``mnist`` (shipped, no download), ``cifar10`` (with ``--data-root``), or a folder of images
(``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``; searched recursively, sorted by path), converted to the model's
channels and required to have its resolution. Images are mapped from ``[0, 1]`` to ``--data-range``.

Prints the mean bits/dim with its standard error over images and writes a JSON report (``--output``).

Under ``torchrun`` / ``accelerate launch`` the processes share the blocks of ``--batch-size`` images and the main
process writes the report; image i's dequantization noise and probes come from a generator seeded with (seed, i),
so the values are the same for any number of processes. ``--shards-dir`` keeps finished blocks and resumes from
them after a kill.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ._shared import Progress, add_run_arguments, check_threads, check_writable_file

NAME = "likelihood"
HELP = "Bits/dim of images under a saved score model, via the probability-flow ODE (Song et al., 2021)."

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'lo,hi', e.g. '-1,1', got {text!r}") from err
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"need finite lo < hi, got {text!r}")
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="saved pipeline folder (or a bare model folder)")
    parser.add_argument("--data", required=True, help="'digits', 'mnist', 'cifar10' or a folder of images")
    parser.add_argument("--data-root", default=None, help="CIFAR-10 folder with train/ and test/ (for --data cifar10)")
    parser.add_argument("--split", default="test", help="split of a built-in data set (default: test)")
    parser.add_argument("--num-images", type=int, default=None, help="use the first N images (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-range", type=_pair, default=(-1.0, 1.0), help="the model's data range (default: -1,1)")
    parser.add_argument(
        "--num-levels",
        type=int,
        default=None,
        help="quantization levels of the raw data (default: 17 for digits, 256 otherwise)",
    )
    parser.add_argument(
        "--offset-bits",
        type=float,
        default=None,
        help="override the bits/dim offset log2(num_levels / (hi - lo)); 0 = continuous bits",
    )
    parser.add_argument(
        "--dequantize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="uniform dequantization (default: on)",
    )
    parser.add_argument("--num-dequant", type=int, default=1, help="dequantization draws averaged per image")
    parser.add_argument("--trace", default="rademacher", choices=["rademacher", "gaussian", "exact"])
    parser.add_argument("--num-probes", type=int, default=1)
    parser.add_argument("--method", default="dopri5", help="ODE solver (dopri5, bosh3, ... ; default dopri5)")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--eps", type=float, default=1e-5, help="start time of the ODE")
    parser.add_argument(
        "--sde",
        default=None,
        choices=["ve", "vp", "subvp"],
        help="override the SDE type read from the scheduler config",
    )
    parser.add_argument(
        "--prediction-type",
        default=None,
        choices=["epsilon", "v_prediction", "sample", "score"],
        help="override the prediction type read from the scheduler config",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base seed >= 0: image i's dequantization noise and probes come from (seed, i) (default: 0)",
    )
    parser.add_argument("--output", default=None, help="JSON report path (default: MODEL_DIR/likelihood.json)")
    parser.add_argument(
        "--shards-dir",
        default=None,
        metavar="DIR",
        help="keep finished blocks of images in DIR (.npz) and resume from them after a kill",
    )
    add_run_arguments(parser, shards="image")


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
def _load_model_and_scheduler(model_dir: str) -> tuple[torch.nn.Module, object | None]:
    """The score network and the scheduler (or its config dict; ``None`` if there is none)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"MODEL_DIR {model_dir!r} is not a folder")
    index_path = folder / "model_index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        entry = index.get("_class_name")
        import sde_diffusers.pipelines as ours

        if isinstance(entry, list) or hasattr(ours, str(entry)):
            from sde_diffusers.pipelines.pipeline_utils import SDEDiffusionPipeline

            pipe = SDEDiffusionPipeline.from_pretrained(model_dir)
        else:
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(model_dir)
        components = pipe.components
        model = components.get("unet")
        if model is None:
            model = next((c for c in components.values() if isinstance(c, torch.nn.Module)), None)
        if model is None:
            raise ValueError(f"the pipeline in {model_dir!r} has no network component")
        return model, components.get("scheduler")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir!r} has neither model_index.json (a pipeline) nor config.json (a model)")
    class_name = json.loads(config_path.read_text()).get("_class_name")
    import diffusers

    import sde_diffusers

    cls = getattr(sde_diffusers, str(class_name), None) or getattr(diffusers, str(class_name), None)
    if not isinstance(cls, type):
        raise ValueError(f"unknown model class {class_name!r} in {config_path}")
    model = cls.from_pretrained(model_dir)
    scheduler_config = None
    for candidate in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if candidate.is_file():
            scheduler_config = json.loads(candidate.read_text())
            break
    return model, scheduler_config


def _model_geometry(model: torch.nn.Module) -> tuple[int | None, int | None]:
    config = getattr(model, "config", {}) or {}
    channels = config.get("in_channels")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return channels, size


def _load_folder(path: Path, channels: int | None) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) under {str(path)!r}")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for file in files:
        with Image.open(file) as im:
            arrays.append(np.asarray(im.convert(mode), dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"the images under {str(path)!r} have different sizes: {sorted(shapes)[:4]}")
    x = torch.from_numpy(np.stack(arrays)).float() / 255.0
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


def load_images(data: str, split: str, root: str | None, channels: int | None) -> tuple[torch.Tensor, int]:
    """Images in ``[0, 1]`` of shape ``(N, C, H, W)`` and their number of quantization levels."""
    from sde_diffusers.evaluation.datasets import BUILTIN_DATASETS, load_builtin

    if data in BUILTIN_DATASETS:
        x, _ = load_builtin(data, split=split, root=root)
        levels = 17 if data == "digits" else 256
    else:
        path = Path(data)
        if not path.is_dir():
            raise FileNotFoundError(f"--data must be one of {BUILTIN_DATASETS} or a folder of images, got {data!r}")
        x, levels = _load_folder(path, channels), 256
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:
            raise ValueError(f"the data has {x.shape[1]} channels but the model takes {channels}")
    return x, levels


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------
def _check_args(args: argparse.Namespace) -> None:
    from sde_diffusers.validation import check_int, check_positive

    for name in ("batch_size", "num_dequant", "num_probes"):
        check_int(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.num_images is not None:
        check_int("--num-images", args.num_images)
    if args.num_levels is not None:
        check_int("--num-levels", args.num_levels, minimum=2)
    check_int("--seed", args.seed, minimum=0)
    for name in ("rtol", "atol", "eps"):
        check_positive(f"--{name}", getattr(args, name))
    check_threads(args)


def run(args: argparse.Namespace) -> int:
    from sde_diffusers.distributed import Processes
    from sde_diffusers.evaluation.quality import per_image_bits_per_dim
    from sde_diffusers.likelihood import default_prediction_type, sde_from_scheduler_config

    _check_args(args)
    processes = Processes(args.device)
    device = processes.device
    main = processes.is_main_process
    output = Path(args.output) if args.output else Path(args.model_dir) / "likelihood.json"

    # ---- loading and checks: on every process, a failure anywhere stops them all ----------------------------
    with processes.agree():
        model, scheduler = _load_model_and_scheduler(args.model_dir)
        config = dict(getattr(scheduler, "config", scheduler) or {})
        if args.sde is not None:
            config["sde_type"] = args.sde
            scheduler = None
        if not config and args.sde is None:
            raise ValueError(f"{args.model_dir!r} has no scheduler config: pass --sde ve|vp|subvp")
        sde = scheduler.sde if hasattr(scheduler, "sde") else sde_from_scheduler_config(config)
        prediction_type = args.prediction_type or default_prediction_type(model, sde, config)
        model = model.to(device).eval()
        channels, size = _model_geometry(model)
        images, levels = load_images(args.data, args.split, args.data_root, channels)
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"the images are {tuple(images.shape[-2:])} but the model takes {size}x{size}")
        if main:
            check_writable_file(output, "--output")
    if args.num_images is not None:
        images = images[: args.num_images]
    lo, hi = args.data_range
    images = lo + (hi - lo) * images
    num_levels = args.num_levels or levels

    start = time.perf_counter()
    bar = Progress(len(images), unit="img", desc="bits/dim", enabled=main and not args.no_progress)
    try:
        result = per_image_bits_per_dim(
            model,
            sde,
            images,
            batch_size=args.batch_size,
            seed=args.seed,
            processes=processes,
            shards_dir=args.shards_dir,
            settings={"data": args.data, "split": args.split, "sde_config": sde.config},
            on_images=lambda done, mean: bar.update(done - bar.bar.n, bpd=f"{mean:.4f}"),
            batch_invariant=args.batch_invariant,
            trace=args.trace,
            num_probes=args.num_probes,
            rtol=args.rtol,
            atol=args.atol,
            eps=args.eps,
            method=args.method,
            dequantize=args.dequantize,
            num_dequant=args.num_dequant,
            data_range=(lo, hi),
            num_levels=num_levels,
            offset_bits=args.offset_bits,
            prediction_type=prediction_type,
        )
    finally:
        bar.close()
    if not main:
        return 0
    elapsed = time.perf_counter() - start
    values = result.bits_per_dim
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    nfe = result.nfe_per_block
    report = {
        "model_dir": os.fspath(args.model_dir),
        "data": args.data,
        "split": args.split,
        "num_images": len(values),
        "bits_per_dim": mean,
        "bits_per_dim_stderr": stderr,
        "offset_bits": result.offset_bits,
        "sde": type(sde).__name__,
        "sde_config": sde.config,
        "prediction_type": prediction_type,
        "settings": {
            "trace": args.trace,
            "num_probes": args.num_probes,
            "method": args.method,
            "rtol": args.rtol,
            "atol": args.atol,
            "eps": args.eps,
            "dequantize": args.dequantize,
            "num_dequant": args.num_dequant,
            "data_range": [lo, hi],
            "num_levels": num_levels,
            "batch_size": args.batch_size,
            "batch_invariant": args.batch_invariant,
            "seed": args.seed,
        },
        "seeds": {
            "base": args.seed,
            "image i": "torch.Generator('cpu').manual_seed(sde_diffusers.distributed.item_seed(seed, i))",
        },
        "num_processes": processes.num_processes,
        "shards_dir": args.shards_dir,
        "resumed_images": result.resumed_images,
        "nfe_per_batch": nfe,
        "seconds": elapsed,
        "wall_time_s": elapsed,
        "device": str(device),
        "per_image_bits_per_dim": values.tolist(),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    mean_nfe = f"mean NFE {np.mean(nfe):.0f}, " if nfe else ""
    print(f"{mean:.4f} ± {stderr:.4f} bits/dim ({len(values)} images, {mean_nfe}{elapsed:.1f} s)")
    print(f"report: {output}")
    return 0
