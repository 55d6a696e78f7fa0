"""FD_DINOv2 and CLIP features through `transformers`, on tiny randomly initialised models saved locally.

What is checked:

* our batched torch preprocessing gives the same ``pixel_values`` as transformers' own image processors
  (``BitImageProcessor`` for DINOv2, ``CLIPImageProcessor``) on the same pixels, and it is what the extractors run:
  their features equal the model applied to the processor's output;
* the Fréchet distance of the features of two-image mixtures (an image and a brightness-shifted copy, in
  different proportions) equals its closed form, which holds only if the features are deterministic and
  independent of batch composition;
* loading by folder and by Hub repo id (the project's local test Hub), the CLIP score against a direct
  computation and closed forms, the evaluate command end to end, lazy import, and clear errors for bad input.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sde_diffusers.evaluation import (
    FeatureStatistics,
    PrecisionRecallOutput,
    extract_features,
    frechet_distance,
    load_feature_extractor,
    precision_recall,
)
from sde_diffusers.evaluation.image_preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing
from sde_diffusers.evaluation.metrics import clip_score
from sde_diffusers.evaluation.transformers_features import (
    CLIPExtractor,
    DINOv2Extractor,
    class_clip_score,
    class_prompts,
    fd_dinov2_preprocessing,
)

transformers = pytest.importorskip("transformers")

DINO_DIM = 32  # hidden size of the tiny DINOv2
CLIP_DIM = 16  # projection size of the tiny CLIP


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _processor(cls_name: str, **config):
    # Without torchvision transformers falls back to its PIL processors (with a warning): exactly the reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(transformers, cls_name)(**config)


def _pixel_values(processor, images: torch.Tensor) -> torch.Tensor:
    """The processor's output for uint8 `(N, C, H, W)` images, fed as PIL images (as users feed it)."""
    from PIL import Image

    arrays = images.permute(0, 2, 3, 1).numpy()
    pil = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]
    return processor(images=pil, return_tensors="pt")["pixel_values"]


def _photo(size: int, count: int = 1, seed: int = 0) -> torch.Tensor:
    """uint8 crops of a real photograph (skimage's astronaut) at ``size``, plus noise so they differ."""
    from PIL import Image
    from skimage import data

    base = np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC), dtype=np.int16)
    rng = np.random.default_rng(seed)
    out = [np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _noise(shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# Tiny models, saved as users would save them
# ---------------------------------------------------------------------------------------------------------
def _clip_tokenizer():
    """A byte-level CLIP tokenizer with a character vocabulary (enough to tokenise any prompt)."""
    from transformers import CLIPTokenizer

    printable = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab: dict[str, int] = {}
    for c in printable + [c + "</w>" for c in printable]:
        vocab[c] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # the highest id, as in OpenAI's vocabulary
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=DINO_DIM, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=56, patch_size=14
    )
    folder = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2Model(config).save_pretrained(folder)
    # DINOv2's published processor: shorter side to 256, centre crop 224, bicubic, ImageNet statistics
    _processor(
        "BitImageProcessor",
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=24,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=CLIP_DIM,
    )
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _processor(
        "CLIPImageProcessor", size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dino(dino_dir):
    return load_feature_extractor("dinov2", dino_dir)


@pytest.fixture(scope="module")
def clip(clip_dir):
    return CLIPExtractor.from_pretrained(clip_dir, with_text=True)


# ---------------------------------------------------------------------------------------------------------
# Preprocessing against transformers' processors
# ---------------------------------------------------------------------------------------------------------
DINO_STANDARD = dict(
    size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3, image_mean=list(IMAGENET_MEAN)
)
DINO_STANDARD["image_std"] = list(IMAGENET_STD)
FD_DINOV2 = dict(DINO_STANDARD, size={"height": 224, "width": 224}, do_center_crop=False)
PROCESSORS = {
    "dinov2-standard": ("BitImageProcessor", DINO_STANDARD),
    "fd_dinov2": ("BitImageProcessor", FD_DINOV2),
    "clip": ("CLIPImageProcessor", {}),
    "bilinear-small": ("BitImageProcessor", dict(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16})),
}


@pytest.mark.parametrize("name", list(PROCESSORS))
@pytest.mark.parametrize("size", [8, 32, 300])
def test_preprocessing_matches_transformers_processors(name, size):
    cls_name, config = PROCESSORS[name]
    if name == "bilinear-small":
        config = dict(config, resample=2)
    processor = _processor(cls_name, **config)
    ours = ImagePreprocessing.from_processor_config(processor.to_dict())
    # a photograph and uniform noise (the worst case for Pillow's per-pass 8-bit rounding and clipping)
    images = torch.cat([_photo(size), _noise((1, 3, size, size))])
    expected = _pixel_values(processor, images)
    got = ours(images)
    assert got.shape == expected.shape and got.dtype == torch.float32
    # one 8-bit level is 1/255/std ~ 0.017 here: 1e-5 means the same pixels, up to float32 rounding
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the same images as floats in (-1, 1) (diffusion samples) give the same tensor
    torch.testing.assert_close(ours(images.float() / 127.5 - 1, input_range=(-1, 1)), expected, rtol=0, atol=1e-5)


def test_preprocessing_grayscale_non_square_and_padding():
    dino = _processor("BitImageProcessor", **DINO_STANDARD)
    ours = ImagePreprocessing.from_processor_config(dino.to_dict())
    gray = _noise((2, 1, 28, 28), seed=1)  # grayscale is repeated to RGB, as convert("RGB") does
    torch.testing.assert_close(ours(gray), _pixel_values(dino, gray), rtol=0, atol=1e-5)
    clip = _processor("CLIPImageProcessor")
    ours = ImagePreprocessing.from_processor_config(clip.to_dict())
    wide = _noise((1, 3, 40, 56), seed=2)  # shortest edge: 40x56 -> 224x313, centre crop 224
    torch.testing.assert_close(ours(wide), _pixel_values(clip, wide), rtol=0, atol=1e-5)
    # a crop larger than the resized image: the processors pad with black first
    small = _processor("BitImageProcessor", size={"shortest_edge": 20}, crop_size={"height": 24, "width": 22})
    ours = ImagePreprocessing.from_processor_config(small.to_dict())
    torch.testing.assert_close(
        ours(_noise((1, 3, 30, 30))), _pixel_values(small, _noise((1, 3, 30, 30))), rtol=0, atol=1e-5
    )
    # and the round trip through a processor configuration
    assert (
        ImagePreprocessing.from_processor_config(
            _processor("BitImageProcessor", **ours.to_processor_config()).to_dict()
        )
        == ours
    )


def test_float_arithmetic_is_edm2_fast_path():
    """``arithmetic="float"`` is EDM2's resize: torch's antialiased bicubic interpolate on [0, 255] floats."""
    images = _photo(40, count=2)
    x = F.interpolate(images.float(), size=(224, 224), mode="bicubic", antialias=True) / 255.0
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    got = fd_dinov2_preprocessing("float")(images)
    torch.testing.assert_close(got, (x - mean) / std, rtol=0, atol=1e-4)
    # the 8-bit path rounds and clips to [0, 255] after each pass (the float path keeps bicubic overshoot)
    diff = (fd_dinov2_preprocessing("uint8")(images) - got) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    assert 0.1 < diff.abs().mean() < 1.0


def test_preprocessing_rejects_bad_input():
    prep = fd_dinov2_preprocessing()
    with pytest.raises(ValueError, match=r"1 \(grayscale\) or 3 \(RGB\) channels, got 4"):
        prep(_noise((1, 4, 8, 8)))
    with pytest.raises(ValueError, match=r"1 \(grayscale\) or 3 \(RGB\) channels, got 2"):
        prep(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="input_range"):
        prep(torch.rand(1, 3, 8, 8) * 255)
    with pytest.raises(ValueError, match="shape"):
        prep(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="resample"):
        ImagePreprocessing(resample="nearest")
    with pytest.raises(ValueError, match="arithmetic"):
        ImagePreprocessing(arithmetic="int")
    with pytest.raises(ValueError, match="size"):
        ImagePreprocessing.from_processor_config({"size": {"longest_edge": 224}})
    with pytest.raises(ValueError, match="resample"):
        ImagePreprocessing.from_processor_config({"size": {"shortest_edge": 8}, "resample": 0})


# ---------------------------------------------------------------------------------------------------------
# The extractors run exactly the processor + model pipeline
# ---------------------------------------------------------------------------------------------------------
def test_dinov2_features_are_the_models_cls_token_on_processed_pixels(dino, dino_dir):
    from transformers import Dinov2Model

    assert isinstance(dino, DINOv2Extractor) and not dino.training and dino.feature_dim == DINO_DIM
    assert not any(p.requires_grad for p in dino.parameters())
    images = torch.cat([_photo(32, count=2), _noise((1, 3, 32, 32))])
    reference_model = Dinov2Model.from_pretrained(dino_dir).eval()
    processor = _processor("BitImageProcessor", **FD_DINOV2)  # the default protocol
    with torch.no_grad():
        expected = reference_model(pixel_values=_pixel_values(processor, images))
    out = dino(images)
    assert out.features.shape == (3, DINO_DIM) and out.logits.shape == (3, 0)
    torch.testing.assert_close(out.features, expected.pooler_output, rtol=1e-5, atol=1e-5)
    # pooler_output is the CLS token after the final layer norm (dgm-eval's x_norm_clstoken)
    torch.testing.assert_close(out.features, expected.last_hidden_state[:, 0])
    # protocol="processor": the repo's own preprocessor_config.json (shorter side 256, crop 224)
    standard = load_feature_extractor("dinov2", dino_dir, protocol="processor")
    with torch.no_grad():
        expected = reference_model(
            pixel_values=_pixel_values(_processor("BitImageProcessor", **DINO_STANDARD), images)
        )
    torch.testing.assert_close(standard(images).features, expected.pooler_output, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(standard(images).features, out.features, atol=1e-3)  # the crop matters


def test_dinov2_with_registers_loads_too(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(1)
    config = Dinov2WithRegistersConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=28, patch_size=14
    )
    model = Dinov2WithRegistersModel(config).eval()
    model.save_pretrained(tmp_path / "reg")
    images = _photo(20, count=2)
    extractor = load_feature_extractor("dinov2", tmp_path / "reg")
    with torch.no_grad():
        expected = model(pixel_values=_pixel_values(_processor("BitImageProcessor", **FD_DINOV2), images))
    torch.testing.assert_close(extractor(images).features, expected.pooler_output, rtol=1e-5, atol=1e-5)


def test_clip_features_are_the_image_embeddings_on_processed_pixels(clip, clip_dir):
    from transformers import CLIPModel

    assert clip.feature_dim == CLIP_DIM and clip.has_text
    images = torch.cat([_photo(48, count=2), _noise((1, 3, 48, 48))])
    reference_model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        expected = reference_model.get_image_features(pixel_values=_pixel_values(processor, images))
    expected = expected if isinstance(expected, torch.Tensor) else expected.pooler_output
    torch.testing.assert_close(clip(images).features, expected, rtol=1e-5, atol=1e-5)
    # the image tower alone (the default load) gives the same embeddings
    vision_only = load_feature_extractor("clip", clip_dir)
    assert not vision_only.has_text
    torch.testing.assert_close(vision_only(images).features, clip(images).features)


# ---------------------------------------------------------------------------------------------------------
# Fréchet distance: closed form on shifted inputs
# ---------------------------------------------------------------------------------------------------------
def _two_image_set(a: torch.Tensor, b: torch.Tensor, n_a: int, n_b: int) -> torch.Tensor:
    """``n_a`` copies of ``a`` and ``n_b`` of ``b``, interleaved so that every batch mixes both."""
    order = torch.randperm(n_a + n_b, generator=torch.Generator().manual_seed(n_a))
    return torch.cat([a.expand(n_a, -1, -1, -1), b.expand(n_b, -1, -1, -1)])[order]


def _mixture_fd(u2: float, p1: float, n1: int, p2: float, n2: int) -> float:
    """FD between two-point feature distributions on the same pair of points, ``|f_a - f_b|^2 = u2``.

    With a fraction ``p`` at ``f_a``: mean ``f_b + p u``, unbiased covariance ``c u u^T`` with
    ``c = p (1 - p) n / (n - 1)``; two rank-one covariances along ``u`` give ``tr((C1 C2)^1/2) = sqrt(c1 c2) u2``.
    """
    c1, c2 = p1 * (1 - p1) * n1 / (n1 - 1), p2 * (1 - p2) * n2 / (n2 - 1)
    return u2 * ((p1 - p2) ** 2 + (np.sqrt(c1) - np.sqrt(c2)) ** 2)


@pytest.mark.parametrize("name", ["dinov2", "clip"])
def test_frechet_distance_of_shifted_mixtures_matches_closed_form(name, dino, clip):
    extractor, dim = (dino, DINO_DIM) if name == "dinov2" else (clip, CLIP_DIM)
    a = _photo(32)
    b = (a.int() + 60).clamp(0, 255).to(torch.uint8)  # the same photograph, brighter
    f_a, f_b = extractor(a).features[0], extractor(b).features[0]
    u2 = float(((f_a - f_b).double() ** 2).sum())
    assert u2 > 1e-3  # the shift is visible in feature space
    n = dim + 8  # more samples than feature dimensions
    for (k1, k2), batch_size in (((n // 2, n // 4), 7), ((n // 4, 3 * n // 4), 16), ((n // 2, n // 2), n)):
        x = extract_features(extractor, _two_image_set(a, b, k1, n - k1), batch_size=batch_size).features
        y = extract_features(extractor, _two_image_set(a, b, k2, n - k2), batch_size=5).features
        expected = _mixture_fd(u2, k1 / n, n, k2 / n, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank-one covariances: allow_small_sample only silences the check
            fd = frechet_distance(x, y, allow_small_sample=True)
        assert fd == pytest.approx(expected, rel=1e-4, abs=1e-9)
    # precision/recall on two-point sets: every sample sits on a point of the other set
    assert precision_recall(x, y, k=3) == PrecisionRecallOutput(precision=1.0, recall=1.0)


def test_features_are_deterministic_and_input_format_independent(dino, dino_dir):
    images = _photo(16, count=5, seed=3)
    reference = dino(images).features
    torch.testing.assert_close(extract_features(dino, images, batch_size=2).features, reference)
    torch.testing.assert_close(dino(images.float() / 255).features, reference)
    torch.testing.assert_close(dino(images.float() / 127.5 - 1, input_range=(-1, 1)).features, reference)
    torch.testing.assert_close(dino(images.numpy()).features, reference)
    torch.testing.assert_close(load_feature_extractor("dinov2", dino_dir)(images).features, reference)
    # grayscale is treated as RGB with equal channels
    gray = images[:, :1]
    torch.testing.assert_close(dino(gray).features, dino(gray.expand(-1, 3, -1, -1)).features)


def test_cached_statistics_keep_the_extractor_provenance(dino, tmp_path):
    real = extract_features(dino, _photo(16, count=40, seed=4)).features
    fake = extract_features(dino, _photo(16, count=40, seed=5)).features
    meta = dino.describe()
    assert meta["extractor"] == "dinov2" and meta["feature_dim"] == str(DINO_DIM)
    assert json.loads(meta["preprocessing"])["resize"] == [224, 224]
    path = FeatureStatistics.from_features(real, metadata=meta).save(tmp_path / "ref.npz")
    cached = FeatureStatistics.load(path)
    assert cached.metadata == meta
    assert frechet_distance(fake, cached) == pytest.approx(frechet_distance(fake, real), rel=1e-10)
    other = load_feature_extractor("dinov2", dino.source, protocol="processor").describe()
    assert other["preprocessing"] != meta["preprocessing"]  # a cache made under another protocol is told apart


def test_load_by_repo_id_from_the_hub(dino_dir, clip_dir, dino, local_hub, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=local_hub.url, token=local_hub.token)
    for repo, folder in (("sde-tests/tiny-dinov2", dino_dir), ("sde-tests/tiny-clip", clip_dir)):
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    images = _photo(16, count=2)
    loaded = load_feature_extractor("dinov2", "sde-tests/tiny-dinov2", cache_dir=str(tmp_path / "cache"))
    torch.testing.assert_close(loaded(images).features, dino(images).features)
    assert loaded.describe()["weights"] == "sde-tests/tiny-dinov2" and loaded.describe()["revision"]
    clip = CLIPExtractor.from_pretrained("sde-tests/tiny-clip", with_text=True, cache_dir=str(tmp_path / "cache"))
    assert clip.encode_text(["a photo of a cat."]).shape == (1, CLIP_DIM)


# ---------------------------------------------------------------------------------------------------------
# CLIP score
# ---------------------------------------------------------------------------------------------------------
def test_clip_score_closed_forms():
    angles = np.array([0.0, np.pi / 3, np.pi / 2, 2 * np.pi / 3])
    images = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1.0], [2.0], [0.5], [3.0]])
    text = np.array([[1.0, 0.0]])
    # paired: cosines 1, 1/2, 0, -1/2 (clipped to 0); norms do not matter
    out = clip_score(images, np.repeat(text * 7.0, 4, axis=0))
    np.testing.assert_allclose(out.per_image, [100.0, 50.0, 0.0, 0.0], atol=1e-9)
    assert out.score == pytest.approx(37.5) and out.accuracy is None
    assert clip_score(images, np.repeat(text, 4, axis=0), scale=2.5).score == pytest.approx(2.5 * 0.375)
    # class prompts: two texts, labels pick one per image; accuracy = nearest text is the label
    texts = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = [0, 1, 1, 0]
    out = clip_score(images, texts, labels=labels)
    np.testing.assert_allclose(out.per_image, [100.0, 100 * np.sin(np.pi / 3), 100.0, 0.0], atol=1e-9)
    assert out.accuracy == pytest.approx(0.75)  # only image 3 (120 degrees, label 0) is nearer the other text
    with pytest.raises(ValueError, match="row by row"):
        clip_score(images, texts)
    with pytest.raises(ValueError, match="index the 2 texts"):
        clip_score(images, texts, labels=[0, 1, 2, 0])
    with pytest.raises(ValueError, match="different feature spaces"):
        clip_score(images, np.ones((2, 3)), labels=labels)
    with pytest.raises(ValueError, match="zero vectors"):
        clip_score(np.zeros((4, 2)), texts, labels=labels)


def test_class_clip_score_matches_a_direct_computation(clip, clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    names = ["cat", "dog", "airplane"]
    images = torch.cat([_photo(32, count=2, seed=6), _noise((4, 3, 32, 32), seed=7)])
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = class_clip_score(clip, images, labels, names, batch_size=4)
    # by hand, with transformers' own processor, tokenizer and CLIPModel
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    processor = transformers.AutoImageProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        tokens = tokenizer([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")
        text = model.get_text_features(**tokens)
        image = model.get_image_features(pixel_values=_pixel_values(processor, images))
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    cos = F.cosine_similarity(image, text[labels], dim=1).double()
    assert out.score == pytest.approx(float((100 * cos.clamp(min=0)).mean()), rel=1e-4, abs=1e-4)
    similarity = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
    assert out.accuracy == pytest.approx(float((similarity.argmax(1) == labels).double().mean()))
    with pytest.raises(ValueError, match="exactly one"):
        class_clip_score(clip, images, labels, names, template="a photo")
    with pytest.raises(ValueError, match="text tower"):
        class_clip_score(load_feature_extractor("clip", clip_dir), images, labels, names)


def test_class_prompts_for_built_in_and_named_classes():
    assert class_prompts(10, data="cifar10")[3] == "a photo of a cat."
    assert class_prompts(10, data="mnist")[7] == 'a photo of the number: "7".'
    assert class_prompts(2, ["red fox", " owl "], data="my-folder") == ["a photo of a red fox.", "a photo of a owl."]
    assert class_prompts(1, ["x"], template="{} art") == ["x art"]
    with pytest.raises(ValueError, match="no default names"):
        class_prompts(3, data="my-folder")
    with pytest.raises(ValueError, match="has 5 classes"):
        class_prompts(5, data="cifar10")
    with pytest.raises(ValueError, match="exactly one"):
        class_prompts(1, ["x"], template="x")


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------
def test_loading_refuses_what_is_not_the_right_vision_model(dino_dir, clip_dir, tmp_path):
    from diffusers import UNet2DModel

    unet_dir = tmp_path / "unet"
    UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    ).save_pretrained(unet_dir)
    with pytest.raises(ValueError, match="not a transformers model"):
        load_feature_extractor("dinov2", unet_dir)
    with pytest.raises(ValueError, match=r"holds a 'clip' model, not a DINOv2 vision model"):
        load_feature_extractor("dinov2", clip_dir)
    with pytest.raises(ValueError, match=r"holds a 'dinov2' model, not a CLIP model"):
        load_feature_extractor("clip", dino_dir)
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_feature_extractor("dinov2", tmp_path / "missing")
    with pytest.raises(ValueError, match="protocol"):
        load_feature_extractor("dinov2", dino_dir, protocol="crop")
    with pytest.raises(TypeError, match="apply only"):
        load_feature_extractor("digits", protocol="processor")
    # a vision-only CLIP cannot give the CLIP score; a CLIP without tokenizer files neither
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    vision_dir = tmp_path / "clip-vision"
    config = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    CLIPVisionModelWithProjection(config).save_pretrained(vision_dir)
    assert load_feature_extractor("clip", vision_dir)(_noise((1, 3, 32, 32))).features.shape == (1, 512)
    with pytest.raises(ValueError, match="vision-only"):
        CLIPExtractor.from_pretrained(vision_dir, with_text=True)
    no_tokenizer = tmp_path / "clip-no-tokenizer"
    transformers.CLIPModel.from_pretrained(clip_dir).save_pretrained(no_tokenizer)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        CLIPExtractor.from_pretrained(no_tokenizer, with_text=True)
    no_processor = tmp_path / "dinov2-no-processor"
    transformers.Dinov2Model.from_pretrained(dino_dir).save_pretrained(no_processor)
    load_feature_extractor("dinov2", no_processor)  # the FD_DINOv2 protocol does not need the processor file
    with pytest.raises(FileNotFoundError, match="preprocessor_config"):
        DINOv2Extractor.from_pretrained(no_processor, protocol="processor")


def test_extractors_reject_bad_images(dino):
    with pytest.raises(ValueError, match=r"1 \(grayscale\) or 3 \(RGB\) channels, got 4"):
        dino(_noise((2, 4, 16, 16)))
    with pytest.raises(ValueError, match="input_range"):
        dino(torch.rand(2, 3, 16, 16) * 255)
    with pytest.raises(ValueError, match="NaN"):
        dino(torch.full((1, 3, 16, 16), float("nan")))


# ---------------------------------------------------------------------------------------------------------
# Integration: evaluate command, lazy import
# ---------------------------------------------------------------------------------------------------------
def test_evaluate_command_with_dinov2_features(dino_dir, tmp_path):
    import sde_diffusers
    from sde_diffusers.cli import main
    from sde_diffusers.models import from_preset
    from sde_diffusers.pipelines import ScoreSdePipeline
    from sde_diffusers.schedulers import VESDEScheduler

    torch.manual_seed(0)
    model_dir = tmp_path / "ve"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sde_diffusers, "ScoreSdePipeline", ScoreSdePipeline, raising=False)
        unet = from_preset("ncsnpp-tiny", sample_size=8, init_scale=1.0)
        ScoreSdePipeline(unet=unet, scheduler=VESDEScheduler(sigma_max=5.0)).save_pretrained(model_dir)
        out = tmp_path / "report.json"
        args = ["evaluate", str(model_dir), "--data", "digits", "--sampler", "ode_euler", "--nfe", "2"]
        args += ["--num-samples", "40", "--num-reference", "60", "--bpd-images", "0", "--kid-subsets", "3"]
        args += ["--no-progress", "--feature-extractor", "dinov2", "--extractor-weights", str(dino_dir)]
        assert main([*args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["feature_extractor"]["name"] == "dinov2"
    assert report["feature_extractor"]["feature_dim"] == DINO_DIM
    assert report["metrics"]["fid"] > 0 and 0 <= report["metrics"]["precision"] <= 1


def test_import_does_not_load_the_transformers_models(dino_dir):
    """`import sde_diffusers` leaves the DINOv2/CLIP code unloaded; loading an extractor loads it.

    (Diffusers itself imports parts of `transformers` when it is installed; the model code is not among them.)
    """
    code = (
        "import sys, sde_diffusers\n"
        "watched = ['transformers.models.dinov2.modeling_dinov2', 'transformers.models.clip.modeling_clip']\n"
        "print(sum(m in sys.modules for m in watched))\n"
        "sde_diffusers.load_feature_extractor('dinov2', sys.argv[1])\n"
        "print(sum(m in sys.modules for m in watched))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(dino_dir)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["0", "1"]
