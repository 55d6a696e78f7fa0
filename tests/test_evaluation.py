"""Tests of sde_diffusers.evaluation: metrics against closed forms, feature extractors, built-in data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from sde_diffusers.evaluation import (
    FID_WEIGHTS_URL,
    FeatureClassifier,
    FeatureStatistics,
    FIDInceptionV3,
    classifier_info,
    extract_features,
    frechet_distance,
    gaussian_frechet_distance,
    inception_score,
    kernel_distance,
    load_builtin,
    load_feature_extractor,
    precision_recall,
)

torch.set_num_threads(1)


def _gaussian(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    return rng.multivariate_normal(mean, cov, size=n)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------
def test_gaussian_frechet_distance_matches_scipy_sqrtm_and_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
    # reference with a general (non-symmetric) matrix square root
    ref = m1 - m2
    ref = ref @ ref + np.trace(c1) + np.trace(c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real)
    assert gaussian_frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-9)
    # symmetric in its arguments
    assert gaussian_frechet_distance(m2, c2, m1, c1) == pytest.approx(ref, rel=1e-9)
    # diagonal covariances: sum (sqrt a - sqrt b)^2 plus the squared mean shift
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    shift = np.array([1.0, -2.0, 0.5])
    expected = shift @ shift + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert gaussian_frechet_distance(np.zeros(3), np.diag(a), shift, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # a singular covariance stays real and exact: N(0, diag(1, 0)) vs N(0, diag(0, 1)) -> 1 + 1
    assert gaussian_frechet_distance(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.diag([0.0, 1.0])) == (
        pytest.approx(2.0, abs=1e-12)
    )


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(500, 16)) * 3 + 5
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(torch.from_numpy(x).float(), x) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0])
def test_frechet_distance_grows_with_known_mean_shift(shift):
    rng = np.random.default_rng(2)
    d, n = 4, 20_000
    cov = _random_spd(rng, d)
    direction = np.ones(d) / 2.0  # unit norm
    x = _gaussian(rng, n, np.zeros(d), cov)
    y = _gaussian(rng, n, shift * direction, cov)
    # equal covariances: the distance is the squared shift; sampling error ~ 2 * d * tr(cov) / n
    assert frechet_distance(x, y) == pytest.approx(shift**2, abs=0.02)


def test_frechet_distance_of_scaled_covariance_matches_closed_form():
    rng = np.random.default_rng(3)
    d, n, s = 3, 40_000, 2.0
    cov = _random_spd(rng, d)
    x = _gaussian(rng, n, np.zeros(d), cov)
    y = _gaussian(rng, n, np.zeros(d), s**2 * cov)
    expected = np.trace(cov) * (1 - s) ** 2  # tr(C) + s^2 tr(C) - 2 s tr(C)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.03)


def test_feature_statistics_cache_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.3
    stats = FeatureStatistics.from_features(x, metadata={"extractor": "test"})
    assert stats.num_samples == 300 and stats.feature_dim == 8
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-12)
    direct = frechet_distance(x, y)
    for suffix in (".npz", ".safetensors"):
        path = stats.save(tmp_path / f"ref{suffix}")
        loaded = FeatureStatistics.load(path)
        assert loaded.num_samples == 300 and loaded.metadata == {"extractor": "test"}
        assert frechet_distance(loaded, y) == pytest.approx(direct, rel=1e-12)
        assert frechet_distance(y, loaded) == pytest.approx(direct, rel=1e-12)
    # pytorch-fid's layout: an .npz with only mu and sigma
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mean, sigma=stats.cov)
    assert frechet_distance(FeatureStatistics.load(tmp_path / "pytorch_fid.npz"), y) == pytest.approx(direct)
    with pytest.raises(ValueError, match=r"\.npz or \.safetensors"):
        stats.save(tmp_path / "ref.pt")
    with pytest.raises(FileNotFoundError):
        FeatureStatistics.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mean=stats.mean)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        FeatureStatistics.load(tmp_path / "bad.npz")


def test_frechet_distance_rejects_bad_inputs():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 8))
    with pytest.raises(ValueError, match="different feature spaces"):
        frechet_distance(x, rng.normal(size=(100, 9)))
    with pytest.raises(ValueError, match="allow_small_sample=True"):
        frechet_distance(rng.normal(size=(8, 8)), x)
    with pytest.warns(UserWarning, match="strongly biased"):
        value = frechet_distance(rng.normal(size=(8, 8)), x, allow_small_sample=True)
    assert np.isfinite(value)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        frechet_distance(bad, x)
    with pytest.raises(ValueError, match=r"\(num_samples, feature_dim\)"):
        frechet_distance(rng.normal(size=(10, 3, 3)), x)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        frechet_distance([[0.0, 1.0]], x)
    with pytest.raises(ValueError, match="different dimensions"):
        gaussian_frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="cov must have shape"):
        FeatureStatistics(mean=np.zeros(3), cov=np.eye(2))


# ---------------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------------
def test_kernel_distance_is_unbiased_and_detects_shift():
    rng = np.random.default_rng(6)
    d = 16
    x, y = rng.normal(size=(2000, d)), rng.normal(size=(2000, d))
    same = kernel_distance(x, y, subset_size=50, num_subsets=200)
    shifted = kernel_distance(x, y + 0.5, subset_size=50, num_subsets=200)
    # with the diagonal included (the biased V-statistic) the same-distribution value would be
    # 2 (E k(x,x) - E k(x,x')) / m ~ 2 (8.8 - 1.2) / 50 ~ 0.30 here; the unbiased estimate is ~0
    assert abs(same.mean) < 0.02
    assert shifted.mean > 0.5
    assert shifted.mean > 10 * shifted.std / np.sqrt(200)
    assert same.subset_values.shape == (200,)
    # linear kernel (degree 1, gamma 1/d, coef0 0): the unbiased MMD^2 estimates |mean shift|^2 / d
    delta = np.zeros(d)
    delta[:4] = 1.0
    linear = kernel_distance(x, y + delta, subset_size=500, num_subsets=50, degree=1, coef0=0.0)
    assert linear.mean == pytest.approx(4.0 / d, abs=0.02)


def test_kernel_distance_is_deterministic_given_seed_and_validates():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(200, 8)) + 0.2
    a = kernel_distance(x, y, num_subsets=10, seed=3)
    b = kernel_distance(x, y, num_subsets=10, seed=3)
    c = kernel_distance(x, y, num_subsets=10, seed=4)
    np.testing.assert_array_equal(a.subset_values, b.subset_values)
    assert not np.array_equal(a.subset_values, c.subset_values)
    with pytest.raises(ValueError, match="exceeds the smaller sample set"):
        kernel_distance(x, y, subset_size=250)
    with pytest.raises(ValueError, match="different feature spaces"):
        kernel_distance(x, y[:, :4])
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_distance(x, y, num_subsets=0)


# ---------------------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------------------
def test_inception_score_closed_forms():
    c, per_class = 10, 50
    labels = np.tile(np.arange(c), per_class)
    confident = np.full((c * per_class, c), -30.0)
    confident[np.arange(len(labels)), labels] = 30.0
    out = inception_score(confident, num_splits=5)
    assert out.mean == pytest.approx(c, rel=1e-9) and out.std == pytest.approx(0.0, abs=1e-9)
    # one class only, or uniform predictions: the score is 1
    assert inception_score(np.tile(confident[:1], (100, 1)), num_splits=2).mean == pytest.approx(1.0)
    assert inception_score(np.zeros((100, c))).mean == pytest.approx(1.0)
    # two classes equally frequent, each predicted with probability p: exp(log 2 - H(p))
    p = 0.8
    logits = np.log(np.array([[p, 1 - p], [1 - p, p]] * 50))
    expected = np.exp(np.log(2) + p * np.log(p) + (1 - p) * np.log(1 - p))
    assert inception_score(logits, num_splits=1).mean == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="num_splits=20 exceeds"):
        inception_score(confident[:10], num_splits=20)
    with pytest.raises(ValueError, match="at least 2 classes"):
        inception_score(np.zeros((10, 1)), num_splits=1)


# ---------------------------------------------------------------------------------------------------
# Precision / recall
# ---------------------------------------------------------------------------------------------------
def test_precision_recall_identical_disjoint_and_mode_collapse():
    rng = np.random.default_rng(8)
    real = rng.normal(size=(600, 5))
    same = precision_recall(real, real.copy())
    assert same.precision == 1.0 and same.recall == 1.0
    far = precision_recall(real, rng.normal(size=(600, 5)) + 50.0)
    assert far.precision == 0.0 and far.recall == 0.0
    # a generator that covers only a small region around one real point: precise but low recall
    collapsed = real[0] + 0.05 * rng.normal(size=(600, 5))
    out = precision_recall(real, collapsed)
    assert out.precision > 0.9 and out.recall < 0.05
    # deterministic, and the batch size does not change the result
    assert precision_recall(real, collapsed, batch_size=7) == out
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(real, real[:3], k=3)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real, real, k=0)


# ---------------------------------------------------------------------------------------------------
# Inception-v3 FID features (random weights: the real ones cannot be downloaded in tests)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inception() -> FIDInceptionV3:
    torch.manual_seed(0)
    model = FIDInceptionV3()
    # He-initialised convolutions keep activations O(1) through 90+ layers (PyTorch's default init shrinks
    # them to ~1e-8), so comparisons below are meaningful
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.requires_grad_(False).eval()


def test_inception_state_dict_matches_pytorch_fid_layout(inception):
    state = inception.state_dict()
    # torchvision's Inception3 names with aux_logits=False and a 1008-way fc (pytorch-fid's weights file)
    expected_shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    # torchvision's inception_v3 has 27,161,264 parameters; minus the aux head (3,326,696) plus 8 more classes
    assert sum(p.numel() for p in inception.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049


def test_inception_features_and_preprocessing(inception):
    gen = torch.Generator().manual_seed(1)
    gray = torch.rand(2, 1, 32, 32, generator=gen)
    out = inception(gray)
    assert out.features.shape == (2, 2048) and out.logits.shape == (2, 1008)
    assert torch.isfinite(out.features).all() and out.features.std() > 1e-3
    # grayscale is repeated to RGB; the input is bilinearly resized to 299 and mapped to [-1, 1]
    x = inception.preprocess(gray)
    ref = F.interpolate(gray.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, 2 * ref - 1)
    torch.testing.assert_close(inception(gray.expand(-1, 3, -1, -1)).features, out.features)
    # (-1, 1) samples and uint8 pixels reach the same network input as [0, 1] floats
    torch.testing.assert_close(inception.preprocess(2 * gray - 1, input_range=(-1, 1)), x)
    pixels = (gray * 255).round().to(torch.uint8)
    torch.testing.assert_close(inception.preprocess(pixels), inception.preprocess(pixels.float() / 255))
    with pytest.raises(ValueError, match="input_range"):
        inception(gray * 255)
    with pytest.raises(ValueError, match="1 \\(grayscale\\) or 3 \\(RGB\\) channels"):
        inception(torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        inception(torch.full((1, 3, 32, 32), float("nan")))


def test_inception_weights_roundtrip_and_errors(inception, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    expected = inception(images).features
    state = inception.state_dict()
    pth, st = tmp_path / "w.pth", tmp_path / "w.safetensors"
    # an old-style file without num_batches_tracked entries, as pytorch-fid's is
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    for path in (pth, st):
        loaded = load_feature_extractor("inception", weights_path=path)
        assert isinstance(loaded, FIDInceptionV3) and not loaded.training
        torch.testing.assert_close(loaded(images).features, expected)
    # missing file: the message says where to get the standard weights
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        FIDInceptionV3.from_weights(tmp_path / "pt_inception.pth")
    assert FID_WEIGHTS_URL in str(err.value)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="weights_path=None") as err:
        load_feature_extractor("inception")
    assert FID_WEIGHTS_URL in str(err.value)
    # a copy in the torch hub cache (where pytorch-fid downloads it) is found
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    pth.rename(tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
    torch.testing.assert_close(load_feature_extractor("inception")(images).features, expected)
    # a file with another network's weights is refused by name
    torch.save(FeatureClassifier(sample_size=8, block_out_channels=(8,)).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the FID Inception state dict"):
        FIDInceptionV3.from_weights(tmp_path / "other.pth")


# ---------------------------------------------------------------------------------------------------
# Built-in data and the shipped domain classifiers
# ---------------------------------------------------------------------------------------------------
def test_load_builtin_splits():
    x_tr, y_tr = load_builtin("digits", "train")
    x_te, y_te = load_builtin("digits", "test")
    assert x_tr.shape == (1437, 1, 8, 8) and x_te.shape == (360, 1, 8, 8) and y_te.dtype == torch.int64
    assert x_tr.min() >= 0 and x_tr.max() == 1.0
    x, y = load_builtin("mnist", "all")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32 and float(x.max()) == 1.0
    # the known label counts of the MNIST test set
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(x.mean() * 255) == pytest.approx(33.79, abs=0.01)
    x_te, y_te = load_builtin("mnist", "test")
    torch.testing.assert_close(x_te, x[8000:])
    assert len(load_builtin("mnist", "train")[0]) == 8000
    with pytest.raises(ValueError, match="name must be one of"):
        load_builtin("imagenet")
    with pytest.raises(ValueError, match="split for 'mnist'"):
        load_builtin("mnist", "validation")
    with pytest.raises(ValueError, match="pass root="):
        load_builtin("cifar10", "test")
    with pytest.raises(ValueError, match="root is not used for 'digits'"):
        load_builtin("digits", root=".")


def test_load_builtin_cifar10_from_folder(tmp_path):
    from sde_diffusers.evaluation import CIFAR10_CLASSES

    rng = np.random.default_rng(9)
    for i, cls in enumerate(CIFAR10_CLASSES):
        (tmp_path / "test" / cls).mkdir(parents=True)
        pixels = np.full((32, 32, 3), 20 * i, dtype=np.uint8) + rng.integers(0, 5, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "test" / cls / "0000.png")
    x, y = load_builtin("cifar10", "test", root=tmp_path)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == list(range(10))
    assert float(x[9].mean()) == pytest.approx((180 + 2) / 255, abs=0.01)
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        load_builtin("cifar10", "train", root=tmp_path)


def _accuracy(model, images, labels) -> float:
    return float((extract_features(model, images, batch_size=500).logits.argmax(1) == labels).float().mean())


def test_digits_classifier_reaches_reported_accuracy():
    model = load_feature_extractor("digits")
    info = classifier_info("digits")
    x, y = load_builtin("digits", "test")
    acc = _accuracy(model, x, y)
    assert acc == pytest.approx(info["heldout_accuracy"], abs=0.003)
    assert acc >= 0.97
    assert model.feature_dim == info["config"]["feature_dim"]


@pytest.fixture(scope="module")
def mnist_heldout():
    model = load_feature_extractor("mnist")
    x, y = load_builtin("mnist", "test")
    return model, x, y, extract_features(model, x, batch_size=500)


def test_mnist_classifier_reaches_reported_accuracy(mnist_heldout):
    model, x, y, out = mnist_heldout
    acc = float((out.logits.argmax(1) == y).float().mean())
    assert acc >= 0.97
    assert acc == pytest.approx(classifier_info("mnist")["heldout_accuracy"], abs=0.003)
    assert out.features.shape == (2000, model.feature_dim)


def test_mnist_domain_fid_detects_missing_classes(mnist_heldout):
    _, _, y, out = mnist_heldout
    f = out.features
    half_a, half_b = f[:1000], f[1000:]
    # a "generator" that drops five classes is far from the data; two halves of the data are close
    assert frechet_distance(f[y < 5], half_b) > 10 * frechet_distance(half_a, half_b)
    # and it keeps its precision but loses recall
    same, dropped = precision_recall(half_b, half_a), precision_recall(half_b, f[y < 5])
    assert dropped.precision > 0.8 and dropped.recall < same.recall - 0.15


def test_classifier_input_handling():
    model = load_feature_extractor("digits")
    x, _ = load_builtin("digits", "test")
    x = x[:20]
    ref = model(x).features
    torch.testing.assert_close(model(2 * x - 1, input_range=(-1, 1)).features, ref)
    torch.testing.assert_close(model(x.numpy()).features, ref)
    # batching and (images, labels) iterables give the same features
    batches = [(x[:7], None), (x[7:], None)]
    torch.testing.assert_close(extract_features(model, batches).features, ref)
    torch.testing.assert_close(extract_features(model, x, batch_size=3).features, ref)
    with pytest.raises(ValueError, match=r"\(batch, 1, 8, 8\)"):
        model(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(model, x, batch_size=0)
    with pytest.raises(ValueError, match="name must be one of"):
        load_feature_extractor("celeba")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_feature_extractor("digits", weights_path="no-such-folder")


def test_classifier_save_and_reload(tmp_path):
    torch.manual_seed(0)
    model = FeatureClassifier(in_channels=3, sample_size=16, block_out_channels=(8, 16), feature_dim=12).eval()
    images = torch.rand(4, 3, 16, 16)
    model.save_pretrained(str(tmp_path / "clf"))
    loaded = load_feature_extractor("cifar10", weights_path=tmp_path / "clf")
    torch.testing.assert_close(loaded(images).features, model(images).features)
    assert loaded(images).features.shape == (4, 12)
    with pytest.raises(ValueError, match="divisible"):
        FeatureClassifier(sample_size=30, block_out_channels=(8, 16, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert classifier_info("mnist")["num_heldout"] == 2000


def test_mnist_from_a_local_idx_folder(tmp_path):
    """A folder of IDX files (plain or gzipped) loads like the shipped copy."""
    import gzip
    from importlib import resources

    import pytest
    import torch

    from sde_diffusers.evaluation import load_builtin

    shipped = resources.files("sde_diffusers") / "assets" / "mnist"
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        data = (shipped / name).read_bytes()
        (tmp_path / name.removesuffix(".gz")).write_bytes(gzip.decompress(data))
    images, labels = load_builtin("mnist", split="test", root=tmp_path)
    ref_images, ref_labels = load_builtin("mnist", split="test")
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    with pytest.raises(FileNotFoundError, match="IDX"):
        load_builtin("mnist", root=tmp_path.parent)
