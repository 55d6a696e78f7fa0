"""Sample quality of a generative model against a held-out image set: the glue between data, features and metrics.

* :func:`load_reference` loads the held-out images a model is compared with, *at the model's resolution* and
  prepared exactly as the trainer prepares its training images (:func:`sde_diffusers.data.preprocess_image`:
  bicubic resize, 8-bit), so real and generated images go through the same steps from there on.
* :func:`extractor_input` brings 8-bit-quantized images in ``[0, 1]`` to the feature extractor's geometry. The
  project's domain classifiers take one fixed size (MNIST 28x28, digits 8x8, CIFAR-10 32x32); images of another
  size are resized bilinearly (``align_corners=False``, antialiased when shrinking). Real and generated images
  take the same path, so a 16x16 MNIST model is compared with the MNIST test images downsampled to 16x16 (as it
  was trained) and both are upsampled to 28x28 for the classifier. The Inception extractor resizes by itself.
* :func:`sample_quality` computes the Fréchet distance (domain FID), KID and improved precision/recall.
* :func:`heldout_bits_per_dim` is the likelihood of held-out images through the probability-flow ODE
  (:func:`sde_diffusers.likelihood.log_likelihood`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from ..validation import check_int
from .classifier import FeatureClassifier
from .datasets import BUILTIN_DATASETS
from .extractors import extract_features
from .metrics import FeatureStatistics, frechet_distance, kernel_distance, precision_recall

if TYPE_CHECKING:
    from ..distributed import Processes

__all__ = [
    "ReferenceSet",
    "extractor_input",
    "load_reference",
    "quantize_8bit",
    "check_fid_sample_size",
    "sample_quality",
    "heldout_bits_per_dim",
    "per_image_bits_per_dim",
    "BitsPerDimOutput",
    "default_extractor",
    "features_of",
]

#: The domain classifier for each built-in data set.
_DEFAULT_EXTRACTOR = {"digits": "digits", "mnist": "mnist", "cifar10": "cifar10"}


@dataclass
class ReferenceSet:
    """Held-out images at a model's resolution.

    Args:
        images (`torch.Tensor` of shape `(N, C, H, W)`, uint8): the images.
        num_levels (`int`): quantization levels of the raw pixels (17 for native 8x8 digits, 256 otherwise), for
            dequantized bits/dim.
        description (`str`): where they come from and how they were prepared.
        info (`dict`): data set, split and preprocessing, for reports.
    """

    images: torch.Tensor
    num_levels: int = 256
    description: str = ""
    info: dict = field(default_factory=dict)

    def unit_range(self) -> torch.Tensor:
        """The images as float32 in ``[0, 1]``."""
        return self.images.float() / 255.0


def default_extractor(data: str) -> str | None:
    """The domain-FID extractor for a built-in data set (``None`` for an image folder)."""
    return _DEFAULT_EXTRACTOR.get(data)


def _mode(channels: int | None) -> str | None:
    return None if channels is None else ("L" if channels == 1 else "RGB")


def load_reference(
    data: str,
    *,
    split: str = "test",
    resolution: int | None = None,
    channels: int | None = None,
    root: str | os.PathLike | None = None,
) -> ReferenceSet:
    """Load held-out images prepared as the trainer prepares training images.

    Args:
        data (`str`): ``"digits"``, ``"mnist"``, ``"cifar10"`` (with ``root``) or a folder of images (used as given:
            every image below it, sorted by path; ``split`` does not apply).
        split (`str`, defaults to `"test"`): split of a built-in data set (the held-out one by default).
        resolution (`int`, *optional*): the model's image size; images are resized (bicubic) to it.
        channels (`int`, *optional*): the model's channels (1 converts to grayscale, 3 to RGB).
        root (`str`, *optional*): the CIFAR-10 folder (``train/`` and ``test/`` of class folders).

    Returns:
        :class:`ReferenceSet`.

    Raises:
        FileNotFoundError: ``data`` is neither a built-in name nor an existing folder, or the folder has no images.
        ValueError: a bad split or resolution.
    """
    from PIL import Image

    from ..data import list_image_files, load_image_data, preprocess_image
    from .datasets import load_builtin

    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    mode = _mode(channels)
    if data in ("digits", "mnist"):
        loaded = load_image_data(dataset_name=data, split=split, resolution=resolution, image_mode=mode)
        images, description = loaded.images, loaded.description
    elif data in BUILTIN_DATASETS:  # cifar10: JPEG folders, not shipped
        x, _ = load_builtin(data, split=split, root=root)
        raw = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
        if (resolution is not None and tuple(raw.shape[-2:]) != (resolution, resolution)) or mode == "L":
            pil = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in raw]
            raw = torch.from_numpy(np.stack([preprocess_image(im, resolution, image_mode=mode) for im in pil]))
        images, description = raw, f"CIFAR-10 {split} split ({len(raw)} images)"
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"data must be one of {', '.join(BUILTIN_DATASETS)} or a folder of images, got {data!r} "
                "(no such folder)"
            )
        files = list_image_files(folder)
        if not files:
            raise FileNotFoundError(f"no image files under {str(folder)!r}")
        arrays = []
        for path in files:
            with Image.open(path) as im:
                own = "RGB" if im.mode in ("RGB", "RGBA", "P") else "L"
                arrays.append(preprocess_image(im, resolution, image_mode=mode or own))
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(
                f"the images under {str(folder)!r} have different sizes {sorted(shapes)[:4]}; "
                "pass the model's resolution"
            )
        images = torch.from_numpy(np.stack(arrays))
        description = f"image folder {folder.name} ({len(images)} images)"
        split = "all"
    native_digits = data == "digits" and tuple(images.shape[-2:]) == (8, 8)
    info = {
        "data": data if data in BUILTIN_DATASETS else Path(data).name,
        "split": split,
        "num_images": len(images),
        "resolution": list(images.shape[-2:]),
        "channels": int(images.shape[1]),
        "preprocessing": "bicubic resize to the model resolution, 8-bit (the trainer's preprocessing)",
    }
    return ReferenceSet(images=images, num_levels=17 if native_digits else 256, description=description, info=info)


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round ``[0, 1]`` images to the 8-bit grid (what saving them as PNG does), as float32 in ``[0, 1]``."""
    return (images.float().clamp(0, 1) * 255.0).round() / 255.0


def extractor_input(images: torch.Tensor, extractor: torch.nn.Module) -> torch.Tensor:
    """Bring ``[0, 1]`` images to the input geometry of a feature extractor (see the module docstring).

    A domain classifier gets its channel count (grayscale repeated to RGB; RGB to grayscale by ITU-R 601 luma)
    and its size (bilinear, antialiased when shrinking). Other extractors (Inception) get the images unchanged.
    """
    if not isinstance(extractor, FeatureClassifier):
        return images
    c, s = extractor.config.in_channels, extractor.config.sample_size
    if images.shape[1] != c:
        if images.shape[1] == 1 and c == 3:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] == 3 and c == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
            images = (images * weights[None, :, None, None]).sum(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot map {images.shape[1]}-channel images to the extractor's {c} channels")
    if tuple(images.shape[-2:]) != (s, s):
        shrink = images.shape[-1] > s or images.shape[-2] > s
        images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=shrink)
    return images.clamp(0, 1)


def features_of(images: torch.Tensor, extractor: torch.nn.Module, batch_size: int = 256) -> torch.Tensor:
    """Features of 8-bit-quantized ``[0, 1]`` images, shape ``(N, feature_dim)``."""
    x = extractor_input(quantize_8bit(images), extractor)
    return extract_features(extractor, x, batch_size=batch_size, input_range=(0.0, 1.0)).features


def check_fid_sample_size(num_samples: int, feature_dim: int, allow_small_sample: bool = False) -> None:
    """Raise the Fréchet distance's own error now if ``num_samples`` is too small for ``feature_dim`` features.

    Lets a run refuse before any sampling: the metric needs more samples than feature dimensions (see
    :meth:`FeatureStatistics.from_features`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # allow_small_sample=True warns again when the real metric runs
        FeatureStatistics.from_features(torch.zeros(num_samples, feature_dim), allow_small_sample=allow_small_sample)


def sample_quality(
    fake: torch.Tensor,
    real: torch.Tensor,
    *,
    real_statistics: FeatureStatistics | None = None,
    kid_subsets: int = 100,
    pr_k: int = 3,
    seed: int = 0,
    allow_small_sample: bool = False,
) -> dict[str, float]:
    """Domain FID, KID and improved precision/recall of generated features against real ones.

    Args:
        fake (`torch.Tensor` of shape `(n_fake, d)`): features of the generated images.
        real (`torch.Tensor` of shape `(n_real, d)`): features of the reference images.
        real_statistics (`FeatureStatistics`, *optional*): cached mean/covariance of ``real`` (computed if absent).
        kid_subsets (`int`, defaults to 100): KID subsets (of ``min(1000, n_fake, n_real)`` rows each).
        pr_k (`int`, defaults to 3): neighbourhood size of precision/recall, computed on equally many real and
            generated images (a seeded subset of the larger set), as the method assumes.
        seed (`int`, defaults to 0): seed of the KID subsets and the precision/recall subset.
        allow_small_sample (`bool`, defaults to `False`): see :meth:`FeatureStatistics.from_features`.

    Returns:
        `dict` with ``fid``, ``kid``, ``kid_std``, ``precision``, ``recall``.
    """
    stats = real_statistics or FeatureStatistics.from_features(real, allow_small_sample=allow_small_sample)
    fid = frechet_distance(fake, stats, allow_small_sample=allow_small_sample)
    kid = kernel_distance(fake, real, num_subsets=kid_subsets, seed=seed)
    n = min(len(fake), len(real))
    rng = np.random.default_rng(seed)
    real_pr = real[np.sort(rng.choice(len(real), n, replace=False))] if len(real) > n else real
    fake_pr = fake[np.sort(rng.choice(len(fake), n, replace=False))] if len(fake) > n else fake
    pr = precision_recall(real_pr, fake_pr, k=pr_k)
    return {
        "fid": float(fid),
        "kid": float(kid.mean),
        "kid_std": float(kid.std),
        "precision": float(pr.precision),
        "recall": float(pr.recall),
    }


@dataclass
class BitsPerDimOutput(BaseOutput):
    """Result of :func:`per_image_bits_per_dim`.

    Args:
        bits_per_dim (`np.ndarray` of shape `(num_images,)`): each image's bits/dim, in index order.
        nfe_per_block (`list[int]`): network evaluations of each block computed now (in block order).
        offset_bits (`float`): the dequantization offset included in ``bits_per_dim``.
        seconds (`float`): wall time.
        num_processes (`int`): processes that shared the work.
        resumed_images (`int`): images whose values were read back from ``shards_dir``.
    """

    bits_per_dim: np.ndarray
    nfe_per_block: list
    offset_bits: float
    seconds: float
    num_processes: int = 1
    resumed_images: int = 0


def per_image_bits_per_dim(
    model: torch.nn.Module,
    sde: Any,
    images: torch.Tensor,
    *,
    batch_size: int = 64,
    seed: int = 0,
    processes: Processes | None = None,
    shards_dir: str | os.PathLike | None = None,
    settings: dict | None = None,
    on_images: Callable[[int, float], None] | None = None,
    batch_invariant: bool = False,
    **likelihood_kwargs: Any,
) -> BitsPerDimOutput:
    """Bits/dim of every image through the probability-flow ODE, split across the processes of the run.

    Image ``i`` takes its dequantization noise and trace probes from its own generator (seeded with
    :func:`~sde_diffusers.distributed.item_seed` ``(seed, i)``) and the ODE controls each image's step size on its
    own, so the values do not depend on the number of processes; images go in fixed blocks of ``batch_size``
    (see :mod:`sde_diffusers.distributed`).

    Args:
        model, sde: the network and its forward SDE (see :func:`sde_diffusers.likelihood.log_likelihood`).
        images (`torch.Tensor` of shape `(N, C, H, W)`): the data, in the model's data range.
        batch_size (`int`, defaults to 64): images per block (one ODE solve).
        seed (`int`, defaults to 0): base seed (``>= 0``).
        processes ([`~sde_diffusers.distributed.Processes`], *optional*): default: from the launcher's environment.
        shards_dir (`str`, *optional*): keep finished blocks there and resume from them.
        settings (`dict`, *optional*): the run's identity for ``shards_dir`` (with the data's); the model's
            fingerprint, the images' hash, ``batch_size``, ``seed`` and ``likelihood_kwargs`` are added.
        on_images (`Callable[[int, float], None]`, *optional*): ``on_images(images_done, running_mean_bpd)`` on the
            main process after each round (and first for images read back).
        batch_invariant (`bool`, defaults to `False`): solve every image on its own (slower), so the values are
            bit-identical for any ``batch_size``.
        **likelihood_kwargs: passed to :func:`~sde_diffusers.likelihood.log_likelihood` (``trace``, ``rtol``,
            ``dequantize``, ``data_range``, ``num_levels``, ``prediction_type``...).

    Returns:
        :class:`BitsPerDimOutput`, the same on every process.
    """
    import hashlib

    from ..distributed import (
        Processes,
        ShardStore,
        item_generators,
        model_fingerprint,
        run_blocks,
        split_blocks,
    )
    from ..likelihood import dequantization_offset_bits, log_likelihood

    batch_size = check_int("batch_size", batch_size)
    seed = check_int("seed", seed, minimum=0)
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or len(images) == 0:
        raise ValueError("images must be a non-empty tensor of shape (N, C, H, W)")
    device = next((p.device for p in model.parameters()), images.device)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    processes = processes if processes is not None else Processes(device)
    blocks = split_blocks(len(images), batch_size)
    store = None
    if shards_dir is not None:
        identity = {
            **(settings or {}),
            "model": model_fingerprint(model),
            "images": hashlib.sha256(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest(),
            "num_images": len(images),
            "batch_size": batch_size,
            "seed": seed,
            "likelihood": {k: v for k, v in likelihood_kwargs.items() if k != "generator"},
            "batch_invariant": batch_invariant,
            "device_type": torch.device(device).type,
        }
        store = ShardStore(shards_dir, identity, name="bpd")
    done = processes.on_main(lambda: store.open(blocks)) if store is not None else set()

    def solve(block: range) -> dict[str, np.ndarray]:
        values, nfe = [], 0
        for part in [range(i, i + 1) for i in block] if batch_invariant else [block]:
            batch = images[part.start : part.stop].to(device=device, dtype=dtype)
            out = log_likelihood(model, sde, batch, generator=item_generators(seed, part), **likelihood_kwargs)
            values.append(out.bits_per_dim.double().cpu().numpy())
            nfe += out.nfe
        return {"bits_per_dim": np.concatenate(values), "nfe": np.asarray(nfe, dtype=np.int64)}

    values: dict[int, np.ndarray] = {}

    def finished(index: int, result: dict[str, np.ndarray]) -> None:
        if store is not None:
            store.write(blocks[index], result)
        values[index] = result["bits_per_dim"]
        if on_images is not None:
            seen = np.concatenate(list(values.values()))
            on_images(len(seen), float(seen.mean()))

    start = time.perf_counter()
    # shards are on the main process's machine only: it reads the resumed blocks and sends them to the others
    resumed = processes.on_main(lambda: {k: store.read(blocks[k]) for k in sorted(done)}) if done else {}
    if processes.is_main_process and resumed:
        for k, result in resumed.items():
            values[k] = result["bits_per_dim"]
        if on_images is not None:
            seen = np.concatenate(list(values.values()))
            on_images(len(seen), float(seen.mean()))
    computed = run_blocks(processes, blocks, solve, skip=done, on_result=finished)
    results = {**resumed, **computed}
    data_range = likelihood_kwargs.get("data_range", (-1.0, 1.0))
    offset = likelihood_kwargs.get("offset_bits")
    if offset is None:
        offset = dequantization_offset_bits(tuple(data_range), likelihood_kwargs.get("num_levels", 256))
    return BitsPerDimOutput(
        bits_per_dim=np.concatenate([results[k]["bits_per_dim"] for k in range(len(blocks))]),
        nfe_per_block=[int(computed[k]["nfe"]) for k in sorted(computed)],
        offset_bits=float(offset),
        seconds=time.perf_counter() - start,
        num_processes=processes.num_processes,
        resumed_images=sum(len(blocks[k]) for k in done),
    )


def heldout_bits_per_dim(
    pipe: Any,
    reference: ReferenceSet,
    *,
    num_images: int = 64,
    batch_size: int = 64,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    seed: int = 0,
    on_batch: Callable[[int, float], None] | None = None,
    processes: Processes | None = None,
    batch_invariant: bool = False,
) -> dict[str, Any]:
    """Bits/dim of the first ``num_images`` reference images under the pipeline's model (probability-flow ODE).

    Uniform dequantization on ``reference.num_levels`` levels, a Rademacher Hutchinson trace estimate, RK45 with
    the given tolerances from ``t = 1e-5`` (Song et al., 2021). Images are mapped to the network's ``[-1, 1]``.
    Split across the processes of the run like :func:`per_image_bits_per_dim` (image ``i``'s noise comes from
    ``(seed, i)``).

    Args:
        pipe: a score pipeline (its scheduler gives the SDE and the parameterisation).
        reference (:class:`ReferenceSet`): held-out images at the model's resolution.
        num_images (`int`, defaults to 64): how many images (the first ones).
        batch_size (`int`, defaults to 64): images per ODE solve.
        rtol, atol (`float`, defaults to 1e-5): solver tolerances.
        seed (`int`, defaults to 0): seed of the dequantization noise and probes.
        on_batch (`Callable`, *optional*): ``on_batch(images_done, running_mean_bpd)`` after each round.
        processes ([`~sde_diffusers.distributed.Processes`], *optional*): default: from the launcher's environment.
        batch_invariant (`bool`, defaults to `False`): solve every image on its own (bit-identical for any
            ``batch_size``).

    Returns:
        `dict` with ``bits_per_dim``, ``bits_per_dim_stderr``, ``num_images``, ``nfe`` (mean per batch),
        ``offset_bits``, ``seconds``, ``num_processes``, ``per_image_bits_per_dim`` and the settings.
    """
    from ..scheduler_sde import SchedulerSDE

    num_images = check_int("num_images", num_images)
    batch_size = check_int("batch_size", batch_size)
    if num_images > len(reference.images):
        raise ValueError(f"num_images={num_images} exceeds the {len(reference.images)} reference images")
    view = SchedulerSDE(pipe.scheduler, pipe.unet)
    levels = reference.num_levels - 1
    # 8-bit renderings of coarser data (digits: round(255 k / 16)) back onto their own grid k / (num_levels - 1)
    images = (reference.unit_range()[:num_images] * levels).round() / levels * 2.0 - 1.0
    out = per_image_bits_per_dim(
        pipe.unet,
        view.sde,
        images,
        batch_size=batch_size,
        seed=seed,
        processes=processes,
        on_images=on_batch,
        batch_invariant=batch_invariant,
        prediction_type=view.prediction_type,
        time_input=view.time_input,
        rtol=rtol,
        atol=atol,
        dequantize=True,
        data_range=(-1.0, 1.0),
        num_levels=reference.num_levels,
    )
    bpd = out.bits_per_dim
    stderr = float(bpd.std(ddof=1) / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    return {
        "bits_per_dim": float(bpd.mean()),
        "bits_per_dim_stderr": stderr,
        "num_images": len(bpd),
        "nfe": float(np.mean(out.nfe_per_block)) if out.nfe_per_block else float("nan"),
        "offset_bits": out.offset_bits,
        "num_levels": reference.num_levels,
        "seconds": out.seconds,
        "num_processes": out.num_processes,
        "per_image_bits_per_dim": bpd.tolist(),
        "settings": {
            "trace": "rademacher",
            "method": "dopri5",
            "rtol": rtol,
            "atol": atol,
            "eps": 1e-5,
            "dequantize": True,
            "batch_size": batch_size,
            "batch_invariant": batch_invariant,
            "seed": seed,
            "seeding": "image i: torch.Generator('cpu').manual_seed(item_seed(seed, i))",
        },
    }
