"""Image data sets for training: built-in sets, local image folders and Hub datasets, held in memory as uint8.

Every source is decoded and preprocessed once into an :class:`ImageData`: a ``uint8`` tensor of shape
``(N, C, H, W)`` (plus integer labels when the source has classes). Keeping 8-bit images means batches are
converted to ``[-1, 1]`` on the fly (``x / 127.5 - 1``), held-out images stay on the 8-bit grid that
dequantized bits/dim assume, and a training step never waits on decoding (CIFAR-10's 50,000 images take
150 MB).

Sources (exactly one of ``dataset_name`` / ``data_dir``):

* ``dataset_name="digits"``: scikit-learn's 8x8 digits (values ``k / 16`` rendered as ``round(255 k / 16)``);
  ``train`` 1,437 / ``test`` 360 images, 10 classes.
* ``dataset_name="mnist"``: the MNIST test images shipped with the package (``train`` = first 8,000,
  ``test`` = last 2,000), 10 classes.
* ``dataset_name="<namespace>/<name>"``: a Hub dataset through ``datasets.load_dataset``; the image column
  is the first ``Image`` feature unless ``image_column`` is given, labels come from ``label_column`` or the
  first ``ClassLabel`` feature.
* ``data_dir=<folder>``: a local folder through ``datasets``' ``imagefolder`` builder; class subfolders give
  labels, ``train/`` and ``test/`` subfolders give splits.

Preprocessing (PIL and NumPy only): optional mode conversion (``image_mode`` ``"L"`` or ``"RGB"``), then, when a
``resolution`` is given, either ``"resize"`` (shorter side to ``resolution`` with bicubic filtering, then a
centre crop, or a plain resize to a square with ``center_crop=False``) or ``"pad"`` (zero-pad symmetrically,
centre-cropping anything larger). Without a resolution, every image must already have the same size and mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from datasets import ClassLabel
from datasets import Image as ImageFeature
from datasets.exceptions import DatasetsError
from PIL import Image

from .evaluation.datasets import load_builtin
from .validation import check_bool, check_choice, check_int

__all__ = [
    "BUILTIN_DATASETS",
    "RESIZE_MODES",
    "IMAGE_MODES",
    "ImageData",
    "load_image_data",
    "preprocess_image",
    "list_image_files",
    "to_model_range",
]

BUILTIN_DATASETS = ("digits", "mnist")
RESIZE_MODES = ("resize", "pad")
IMAGE_MODES = ("L", "RGB")
_CHANNELS = {"L": 1, "RGB": 3}


def to_model_range(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8-bit images (``uint8``, any shape) to ``[-1, 1]`` as ``x / 127.5 - 1``: the range the models train on."""
    return images.to(dtype) / 127.5 - 1.0


@dataclass
class ImageData:
    """Preprocessed images in memory.

    Args:
        images (`torch.Tensor` of shape `(N, C, H, W)`, dtype uint8): the images.
        labels (`torch.Tensor` of shape `(N,)`, dtype int64, *optional*): class indices.
        class_names (`list[str]`, *optional*): names of the classes, index-aligned with the labels.
        description (`str`): what the data is, for logs and model cards.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    description: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError("images must be a uint8 tensor of shape (N, C, H, W)")
        if self.labels is not None:
            if self.labels.shape != (self.images.shape[0],):
                raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
            self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> tuple[int, int]:
        """``(height, width)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int | None:
        """Number of classes (``None`` without labels)."""
        if self.labels is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def batch(
        self,
        indices: torch.Tensor | Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images at ``indices`` scaled to ``[-1, 1]`` (and their labels), on ``device``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = to_model_range(self.images[idx].to(device=device, non_blocking=True), dtype)
        y = self.labels[idx].to(device=device, non_blocking=True) if self.labels is not None else None
        return x, y

    def to_unit_range(self, indices: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Images (all, or at ``indices``) as float32 in ``[0, 1]``."""
        images = self.images if indices is None else self.images[torch.as_tensor(indices, dtype=torch.long)]
        return images.float() / 255.0


# ---------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------
def _check_options(resolution, resize_mode, center_crop, image_mode) -> None:
    if resolution is not None:
        check_int("resolution", resolution, 1)
    check_choice("resize_mode", resize_mode, RESIZE_MODES)
    check_bool("center_crop", center_crop)
    if image_mode is not None:
        check_choice("image_mode", image_mode, IMAGE_MODES)


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can span many)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _center_crop(image, width: int, height: int):
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def preprocess_image(
    image,
    resolution: int | None = None,
    *,
    resize_mode: str = "resize",
    center_crop: bool = True,
    image_mode: str | None = None,
) -> np.ndarray:
    """One PIL image to a ``uint8`` array of shape ``(C, H, W)``.

    Args:
        image (`PIL.Image.Image`): the image; mode ``"L"`` or ``"RGB"`` unless ``image_mode`` converts it.
        resolution (`int`, *optional*): output side length; ``None`` keeps the size.
        resize_mode (`str`, defaults to `"resize"`): ``"resize"`` or ``"pad"`` (see the module docstring).
        center_crop (`bool`, defaults to `True`): with ``"resize"``, keep the aspect ratio and crop the centre
            (else stretch to a square).
        image_mode (`str`, *optional*): ``"L"`` or ``"RGB"`` to convert to.

    Returns:
        `np.ndarray`: ``uint8`` ``(C, H, W)``.
    """
    _check_options(resolution, resize_mode, center_crop, image_mode)
    if image_mode is not None and image.mode != image_mode:
        image = image.convert(image_mode)
    if image.mode not in IMAGE_MODES:
        raise ValueError(
            f"images must have mode 'L' (grayscale) or 'RGB', got {image.mode!r}; pass image_mode='L' or 'RGB' "
            "to convert them"
        )
    if resolution is not None and image.size != (resolution, resolution):
        if resize_mode == "pad":
            if image.width > resolution or image.height > resolution:
                image = _center_crop(image, min(image.width, resolution), min(image.height, resolution))
            canvas = Image.new(image.mode, (resolution, resolution), 0)
            canvas.paste(image, ((resolution - image.width) // 2, (resolution - image.height) // 2))
            image = canvas
        elif center_crop:
            scale = resolution / min(image.width, image.height)
            size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
            image = _center_crop(image.resize(size, Image.Resampling.BICUBIC), resolution, resolution)
        else:
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _check_uniform(sizes: set, modes: set, resolution: int | None, image_mode: str | None, where: str) -> None:
    if resolution is None and len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:5])
        raise ValueError(
            f"images in {where} have different sizes ({shown}{', ...' if len(sizes) > 5 else ''}); pass a "
            "resolution (--resolution) to resize them to one size"
        )
    if image_mode is None and len(modes) > 1:
        raise ValueError(
            f"images in {where} have different modes {sorted(modes)}; pass image_mode='L' or 'RGB' "
            "(--image_mode) to convert them"
        )


def _stack(images: Iterable, resolution, resize_mode, center_crop, image_mode, where: str) -> torch.Tensor:
    """Check sizes/modes of every image first (headers only), then preprocess them into one tensor."""
    try:
        images = list(images)  # a datasets column decodes here
        if not images:
            raise ValueError(f"{where} holds no images")
        _check_uniform({im.size for im in images}, {im.mode for im in images}, resolution, image_mode, where)
        arrays = [
            preprocess_image(im, resolution, resize_mode=resize_mode, center_crop=center_crop, image_mode=image_mode)
            for im in images
        ]
    except (OSError, DatasetsError) as err:  # not an image, or a truncated file whose pixels do not decode
        raise ValueError(f"cannot decode the images of {where}: {_one_line(err)}") from err
    return torch.from_numpy(np.stack(arrays))


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------
def _image_extensions() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def list_image_files(folder: str | os.PathLike) -> list[str]:
    """Image files (by extension) anywhere below ``folder``, sorted."""
    extensions = _image_extensions()
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, f)
            for f in sorted(files)
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions
        ]
    return found


def _from_builtin(name: str, split: str, resolution, resize_mode, center_crop, image_mode) -> ImageData:
    x, labels = load_builtin(name, split=split)
    # load_builtin gives floats in [0, 1]: digits k / 16, MNIST k / 255. Both round to their 8-bit rendering.
    raw = (x * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    height, width = raw.shape[2:]
    if resolution is None and image_mode in (None, "L"):
        images = torch.from_numpy(raw.copy())
    else:
        pil = [Image.fromarray(a[0], mode="L") for a in raw]
        images = _stack(pil, resolution, resize_mode, center_crop, image_mode, f"the {name} data set")
    size = f"{images.shape[2]}x{images.shape[3]}"
    native = f"{height}x{width}"
    prep = "" if size == native else f", {resize_mode} from {native} to {size}"
    desc = {
        "digits": f"scikit-learn digits ({split} split, {len(images)} images{prep})",
        "mnist": f"MNIST test set as shipped with sde-diffusers ({split} split, {len(images)} images{prep})",
    }[name]
    return ImageData(images, labels, [str(i) for i in range(10)], desc, {"source": name, "split": split})


def _columns(features, image_column: str | None, label_column: str | None, where: str) -> tuple[str, str | None]:
    if image_column is None:
        image_column = next((k for k, v in features.items() if isinstance(v, ImageFeature)), None)
        if image_column is None:
            raise ValueError(f"{where} has no image column (features: {list(features)}); pass image_column")
    elif image_column not in features:
        raise ValueError(f"image_column {image_column!r} is not a column of {where} (columns: {list(features)})")
    if label_column is None:
        label_column = next((k for k, v in features.items() if isinstance(v, ClassLabel)), None)
    elif label_column not in features:
        raise ValueError(f"label_column {label_column!r} is not a column of {where} (columns: {list(features)})")
    return image_column, label_column


def _from_hf_dataset(ds, where, image_column, label_column, resolution, resize_mode, center_crop, image_mode):
    image_column, label_column = _columns(ds.features, image_column, label_column, where)
    images = _stack(ds[image_column], resolution, resize_mode, center_crop, image_mode, where)
    labels = class_names = None
    if label_column is not None:
        values = ds[label_column]
        feature = ds.features[label_column]
        if isinstance(feature, ClassLabel):
            class_names = list(feature.names)
            labels = torch.as_tensor(values, dtype=torch.long)
        else:  # any hashable labels: index them in sorted order
            class_names = sorted({str(v) for v in values})
            lookup = {name: i for i, name in enumerate(class_names)}
            labels = torch.as_tensor([lookup[str(v)] for v in values], dtype=torch.long)
    return images, labels, class_names


def _from_folder(folder, split, image_column, label_column, resolution, resize_mode, center_crop, image_mode):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"data_dir {str(folder)!r} does not exist or is not a folder")
    if not list_image_files(folder):
        raise ValueError(f"data_dir {str(folder)!r} contains no image files")
    subdirs = {d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))}
    has_splits = "train" in subdirs and ({"test", "validation"} & subdirs)
    if split != "train" and not has_splits:
        raise ValueError(f"data_dir {str(folder)!r} has no {split!r} split (no train/ and test/ subfolders)")
    where = f"data_dir {str(folder)!r}" + (f" ({split} split)" if has_splits else "")
    try:
        ds = datasets.load_dataset("imagefolder", data_dir=os.fspath(folder), split=split)
    except (OSError, ValueError, DatasetsError) as err:
        raise ValueError(f"cannot read {where} as an image folder: {_one_line(err)}") from err
    images, labels, names = _from_hf_dataset(
        ds, where, image_column, label_column, resolution, resize_mode, center_crop, image_mode
    )
    desc = f"local image folder {os.path.basename(os.path.abspath(folder))} ({split} split, {len(images)} images)"
    return ImageData(images, labels, names, desc, {"source": "imagefolder", "split": split})


def _from_hub(name, config_name, split, image_column, label_column, resolution, resize_mode, center_crop, image_mode):
    where = f"the Hub dataset {name!r} ({split} split)"
    try:
        ds = datasets.load_dataset(name, config_name, split=split)
    except (OSError, ValueError, DatasetsError) as err:
        # Unreachable Hub, unknown dataset or configuration, missing split: one line, not a traceback.
        raise ValueError(f"cannot load {where}: {_one_line(err)}") from err
    images, labels, names = _from_hf_dataset(
        ds, where, image_column, label_column, resolution, resize_mode, center_crop, image_mode
    )
    return ImageData(
        images,
        labels,
        names,
        f"{name} ({split} split, {len(images)} images)",
        {"source": "hub", "name": name, "split": split},
    )


def load_image_data(
    dataset_name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    resolution: int | None = None,
    resize_mode: str = "resize",
    center_crop: bool = True,
    image_mode: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    dataset_config_name: str | None = None,
) -> ImageData:
    """Load and preprocess an image data set (see the module docstring for sources and preprocessing).

    Args:
        dataset_name (`str`, *optional*): ``"digits"``, ``"mnist"`` or a Hub dataset id.
        data_dir (`str` or `os.PathLike`, *optional*): a local image folder.
        split (`str`, defaults to `"train"`): the split to load (built-ins: ``"train"`` or ``"test"``).
        resolution (`int`, *optional*): square output size; ``None`` keeps the (common) native size.
        resize_mode (`str`, defaults to `"resize"`): ``"resize"`` or ``"pad"``.
        center_crop (`bool`, defaults to `True`): crop the centre after resizing the shorter side.
        image_mode (`str`, *optional*): ``"L"`` or ``"RGB"`` to convert every image to.
        image_column, label_column (`str`, *optional*): columns of a Hub / folder dataset.
        dataset_config_name (`str`, *optional*): configuration of a Hub dataset.

    Returns:
        :class:`ImageData`.

    Raises:
        `FileNotFoundError`: ``data_dir`` does not exist.
        `ValueError`: no source or two sources, an empty folder, mixed sizes / modes without
            ``resolution`` / ``image_mode``, an image that does not decode, or a Hub dataset that cannot be loaded
            (unreachable Hub, unknown name, configuration or split); the message is one line.
    """
    if (dataset_name is None) == (data_dir is None):
        raise ValueError("pass exactly one of dataset_name (digits, mnist or a Hub dataset id) and data_dir")
    _check_options(resolution, resize_mode, center_crop, image_mode)
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path, got {type(data_dir).__name__}")
        return _from_folder(
            data_dir, split, image_column, label_column, resolution, resize_mode, center_crop, image_mode
        )
    if not isinstance(dataset_name, str) or not dataset_name:
        raise ValueError(f"dataset_name must be a non-empty string, got {dataset_name!r}")
    if dataset_name in BUILTIN_DATASETS:
        if split not in ("train", "test"):
            raise ValueError(f"split for {dataset_name!r} must be 'train' or 'test', got {split!r}")
        if image_column is not None or label_column is not None or dataset_config_name is not None:
            raise ValueError(f"image_column, label_column and dataset_config_name do not apply to {dataset_name!r}")
        return _from_builtin(dataset_name, split, resolution, resize_mode, center_crop, image_mode)
    if os.path.exists(dataset_name) or dataset_name.startswith((".", "/", "~")):
        raise ValueError(
            f"dataset_name {dataset_name!r} looks like a path; pass local image folders as data_dir (--train_data_dir)"
        )
    return _from_hub(
        dataset_name,
        dataset_config_name,
        split,
        image_column,
        label_column,
        resolution,
        resize_mode,
        center_crop,
        image_mode,
    )
