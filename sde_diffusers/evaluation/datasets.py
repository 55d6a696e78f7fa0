"""The built-in data sets, as float image tensors in ``[0, 1]`` with integer labels.

* ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn). Split by index:
  ``test`` is every fifth image (360), ``train`` the rest (1,437).
* ``"mnist"``: the 10,000-image MNIST *test* set, shipped with this package (``assets/mnist``, gzipped IDX
  files, see the README there). ``train`` is its first 8,000 images, ``test`` the last 2,000.
* ``"cifar10"``: CIFAR-10 as JPEG files in ``root/<split>/<class>/*.jpg`` (not shipped; pass ``root``).

``split="all"`` returns every image (digits and MNIST).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = ["BUILTIN_DATASETS", "CIFAR10_CLASSES", "load_builtin"]

BUILTIN_DATASETS = ("digits", "mnist", "cifar10")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_MNIST_FILES = {
    "images": (
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "labels": (
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}
_MNIST_TRAIN = 8000


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split for {name!r} must be one of {allowed}, got {split!r}")


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    folder = resources.files("sde_diffusers") / "assets" / "mnist"
    raw = {}
    for key, (filename, sha256) in _MNIST_FILES.items():
        data = (folder / filename).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise OSError(f"the shipped MNIST file {filename} is corrupted (sha256 mismatch); reinstall the package")
        raw[key] = gzip.decompress(data)
    images = np.frombuffer(raw["images"], np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(raw["labels"], np.uint8, offset=8)
    return images, labels


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array, shape from its header."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _mnist_from_folder(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST from a folder of the standard IDX files (``train-*`` and/or ``t10k-*``, gzipped or not).

    With both sets present, ``train``/``test`` are the official splits. With only the test set (as in the
    shipped copy), the same first-8,000 / last-2,000 split as the shipped data is used.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST root {str(folder)!r} is not a folder")
    pairs = {}
    for prefix in ("train", "t10k"):
        images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            pairs[prefix] = (_read_idx(images), _read_idx(labels))
    if not pairs:
        raise FileNotFoundError(
            f"no MNIST IDX files in {str(folder)!r}: expected t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz] (and optionally the train-* pair)"
        )
    if "train" in pairs and "t10k" in pairs:
        chosen = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
        return tuple(np.concatenate([pairs[k][i] for k in chosen]) for i in (0, 1))  # type: ignore[return-value]
    images, labels = next(iter(pairs.values()))
    sl = {"train": slice(0, _MNIST_TRAIN), "test": slice(_MNIST_TRAIN, None), "all": slice(None)}[split]
    return images[sl], labels[sl]


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # sklearn's pixel counts run 0..16
    labels = bunch.target
    index = np.arange(len(labels))
    if split == "train":
        keep = index % 5 != 0
    elif split == "test":
        keep = index % 5 == 0
    else:
        keep = np.ones_like(index, dtype=bool)
    return images[keep], labels[keep]


def _load_cifar10(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no CIFAR-10 folder {str(folder)!r}: root must contain {split}/<class>/*.jpg with the classes "
            f"{', '.join(CIFAR10_CLASSES)}"
        )
    images, labels = [], []
    for label, cls in enumerate(CIFAR10_CLASSES):
        files = sorted(p for p in (folder / cls).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise FileNotFoundError(f"no images in {str(folder / cls)!r}")
        for path in files:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        labels += [label] * len(files)
    return np.stack(images).astype(np.float32) / 255.0, np.asarray(labels)


def load_builtin(
    name: str, split: str = "test", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a built-in data set.

    Args:
        name (`str`): ``"digits"``, ``"mnist"`` or ``"cifar10"``.
        split (`str`, defaults to `"test"`): ``"train"``, ``"test"`` or (digits, MNIST) ``"all"``; see the
            module docstring for how the splits are made.
        root (`str` or `os.PathLike`, *optional*): for CIFAR-10 (required), the folder holding ``train/`` and
            ``test/``; for MNIST (optional), a folder of the standard IDX files to read instead of the shipped
            copy (with only the ``t10k-*`` pair, the splits are those of the shipped copy).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: images `(N, C, H, W)` float32 in ``[0, 1]`` and labels `(N,)` int64.
    """
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"name must be one of {BUILTIN_DATASETS}, got {name!r}")
    if name == "digits" and root is not None:
        raise ValueError("root is not used for 'digits' (it ships with scikit-learn)")
    if name == "digits":
        _check_split(name, split, ("train", "test", "all"))
        images, labels = _load_digits(split)
        x = torch.from_numpy(images).unsqueeze(1)
    elif name == "mnist":
        _check_split(name, split, ("train", "test", "all"))
        if root is not None:
            images, labels = _mnist_from_folder(root, split)
        else:
            raw_images, raw_labels = _mnist_arrays()
            sl = {"train": slice(0, _MNIST_TRAIN), "test": slice(_MNIST_TRAIN, None), "all": slice(None)}[split]
            images, labels = raw_images[sl], raw_labels[sl]
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    else:
        _check_split(name, split, ("train", "test"))
        if root is None:
            raise ValueError(
                "CIFAR-10 is not shipped with the package: pass root=<folder with train/<class>/*.jpg and "
                "test/<class>/*.jpg>"
            )
        images, labels = _load_cifar10(root, split)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))
