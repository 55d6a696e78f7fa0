"""Training data: built-in sets, image folders, preprocessing and the errors for bad folders."""

import numpy as np
import pytest
import torch
from PIL import Image

from sde_diffusers.data import ImageData, list_image_files, load_image_data, preprocess_image


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


def _ramp(height, width, channels=None):
    base = (np.arange(height * width).reshape(height, width) * 7 % 256).astype(np.uint8)
    return base if channels is None else np.repeat(base[..., None], channels, axis=2)


# ---- built-in sets --------------------------------------------------------------------------------------
def test_digits_are_8bit_renderings_of_sklearn_digits_with_labels():
    from sklearn.datasets import load_digits

    train = load_image_data("digits", split="train")
    test = load_image_data("digits", split="test")
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.num_classes == 10
    bunch = load_digits()
    # The test split is every fifth image; values k / 16 become round(255 k / 16).
    expected = np.round(bunch.images[::5] * 255.0 / 16.0).astype(np.uint8)
    assert np.array_equal(test.images[:, 0].numpy(), expected)
    assert torch.equal(test.labels, torch.from_numpy(bunch.target[::5]).long())


def test_mnist_split_of_the_shipped_test_set():
    train = load_image_data("mnist", split="train")
    test = load_image_data("mnist", split="test")
    assert train.images.shape == (8000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert test.labels.min() == 0 and test.labels.max() == 9
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0


def test_resize_and_pad_reach_the_resolution():
    padded = load_image_data("digits", split="test", resolution=16, resize_mode="pad")
    native = load_image_data("digits", split="test")
    assert padded.images.shape == (360, 1, 16, 16)
    # Padding keeps the pixels and surrounds them with zeros.
    assert torch.equal(padded.images[:, :, 4:12, 4:12], native.images)
    assert int(padded.images[:, :, :4].max()) == 0 and int(padded.images[:, :, 12:].max()) == 0
    resized = load_image_data("digits", split="test", resolution=16)
    assert resized.images.shape == (360, 1, 16, 16) and "resize" in resized.description
    rgb = load_image_data("digits", split="test", image_mode="RGB")
    assert rgb.images.shape == (360, 3, 8, 8) and torch.equal(rgb.images[:, 0], native.images[:, 0])


def test_batch_maps_uint8_to_minus_one_one():
    data = ImageData(torch.tensor([0, 255, 51], dtype=torch.uint8).reshape(3, 1, 1, 1), torch.tensor([0, 1, 2]))
    x, y = data.batch([1, 0, 2])
    assert torch.allclose(x.flatten(), torch.tensor([1.0, -1.0, 51 / 127.5 - 1.0]))
    assert torch.equal(y, torch.tensor([1, 0, 2]))
    assert data.num_classes == 3 and data.resolution == (1, 1)


def test_preprocess_center_crop_and_stretch():
    wide = Image.fromarray(_ramp(8, 16))
    cropped = preprocess_image(wide, 4)
    stretched = preprocess_image(wide, 4, center_crop=False)
    assert cropped.shape == stretched.shape == (1, 4, 4)
    assert not np.array_equal(cropped, stretched)
    # Cropping keeps the centre: a symmetric image stays symmetric.
    sym = Image.fromarray(np.concatenate([_ramp(8, 8), _ramp(8, 8)[:, ::-1]], axis=1))
    out = preprocess_image(sym, 8)[0]
    assert np.array_equal(out, out[:, ::-1])
    rgb = preprocess_image(Image.fromarray(_ramp(5, 5, 3)), None)
    assert rgb.shape == (3, 5, 5)


# ---- image folders --------------------------------------------------------------------------------------
def test_image_folder_with_class_subfolders_gives_labels(tmp_path):
    for i in range(3):
        _save(tmp_path / "cats" / f"{i}.png", _ramp(6, 6, 3))
        _save(tmp_path / "dogs" / f"{i}.png", 255 - _ramp(6, 6, 3))
    data = load_image_data(data_dir=tmp_path)
    assert data.images.shape == (6, 3, 6, 6)
    assert data.class_names == ["cats", "dogs"]
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    cats = data.images[data.labels == 0]
    assert torch.equal(cats[0], torch.from_numpy(_ramp(6, 6, 3)).permute(2, 0, 1))
    assert len(list_image_files(tmp_path)) == 6


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(2):
        _save(tmp_path / f"{i}.png", _ramp(4, 4))
    data = load_image_data(data_dir=tmp_path)
    assert data.labels is None and data.num_classes is None and data.images.shape == (2, 1, 4, 4)


def test_mixed_sizes_need_a_resolution(tmp_path):
    _save(tmp_path / "a.png", _ramp(4, 4))
    _save(tmp_path / "b.png", _ramp(6, 6))
    with pytest.raises(ValueError, match="different sizes.*resolution"):
        load_image_data(data_dir=tmp_path)
    assert load_image_data(data_dir=tmp_path, resolution=4).images.shape == (2, 1, 4, 4)


def test_mixed_modes_need_an_image_mode(tmp_path):
    _save(tmp_path / "a.png", _ramp(4, 4))
    _save(tmp_path / "b.png", _ramp(4, 4, 3))
    with pytest.raises(ValueError, match="different modes.*image_mode"):
        load_image_data(data_dir=tmp_path)
    assert load_image_data(data_dir=tmp_path, image_mode="RGB").images.shape == (2, 3, 4, 4)


def test_unsupported_mode_needs_conversion(tmp_path):
    _save(tmp_path / "a.png", np.dstack([_ramp(4, 4)] * 4), mode="RGBA")
    with pytest.raises(ValueError, match="mode 'L'.*'RGB'"):
        load_image_data(data_dir=tmp_path)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_data(data_dir=tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files"):
        load_image_data(data_dir=tmp_path / "empty")


def test_source_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_image_data()
    with pytest.raises(ValueError, match="exactly one"):
        load_image_data("digits", tmp_path)
    with pytest.raises(ValueError, match="looks like a path"):
        load_image_data("./my-images")
    with pytest.raises(ValueError, match="split"):
        load_image_data("digits", split="validation")
    with pytest.raises(ValueError, match="resolution"):
        load_image_data("digits", resolution=0)
    with pytest.raises(ValueError, match="resize_mode"):
        load_image_data("digits", resize_mode="crop")
    with pytest.raises(ValueError, match="no 'test' split"):
        _save(tmp_path / "imgs" / "a.png", _ramp(4, 4))
        load_image_data(data_dir=tmp_path / "imgs", split="test")
