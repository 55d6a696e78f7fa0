"""Feature extractors backed by `transformers` vision models: DINOv2 (FD_DINOv2) and CLIP (CLIP-FID, CLIP score).

Both are ordinary ``nn.Module`` objects with the call contract of the other extractors (``extractor(images,
input_range=...)`` returns a :class:`FeatureExtractorOutput`), so :func:`extract_features`, cached
:class:`FeatureStatistics`, the evaluate command and one-copy-per-process distributed evaluation use them unchanged.
`transformers` is imported only when one is loaded.

* :class:`DINOv2Extractor`: the CLS token after the final layer norm of ``Dinov2Model`` (``pooler_output``; the
  ``x_norm_clstoken`` of the torch-hub model), 1024-d for ViT-L/14 (``facebook/dinov2-large``). The default
  ``protocol="fd_dinov2"`` is the preprocessing under which FD_DINOv2 is reported (Stein et al. 2023, ``dgm-eval``;
  EDM2): the whole image resized to 224x224 with Pillow's bicubic filter, no crop, ImageNet mean/std.
  ``protocol="processor"`` uses the repository's own ``preprocessor_config.json`` instead (for DINOv2: shorter side
  to 256, centre crop 224), which drops the image border and is not what FD_DINOv2 numbers use.
* :class:`CLIPExtractor`: CLIP image embeddings (``visual_projection`` of the pooled output, the space of the CLIP
  score and of clean-fid's CLIP-FID) with the repository's image processor (CLIP: shorter side to the model's
  size, centre crop). Loaded ``with_text=True`` it also embeds text, for :func:`class_clip_score`.

Preprocessing runs batched in torch (:class:`~sde_diffusers.evaluation.image_preprocessing.ImagePreprocessing`)
and reproduces transformers' image processors bit for bit on square images.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .image_preprocessing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocessing
from .metrics import CLIPScoreOutput, clip_score
from .outputs import FeatureExtractorOutput

__all__ = [
    "CLIP_PROMPT",
    "DEFAULT_CLIP_WEIGHTS",
    "DEFAULT_DINOV2_WEIGHTS",
    "CLIPExtractor",
    "DINOv2Extractor",
    "class_clip_score",
    "class_prompts",
    "fd_dinov2_preprocessing",
    "load_transformers_extractor",
]

#: DINOv2 ViT-L/14, the network of FD_DINOv2 (Stein et al. 2023; EDM2).
DEFAULT_DINOV2_WEIGHTS = "facebook/dinov2-large"
#: OpenAI CLIP ViT-L/14.
DEFAULT_CLIP_WEIGHTS = "openai/clip-vit-large-patch14"
#: CLIP's prompt for a class name (Radford et al. 2021).
CLIP_PROMPT = "a photo of a {}."
#: CLIP's prompt for the digit classes of MNIST (from the CLIP paper's prompt lists).
DIGIT_PROMPT = 'a photo of the number: "{}".'

_DINOV2_TYPES = ("dinov2", "dinov2_with_registers")
_CLIP_TYPES = ("clip", "clip_vision_model")
_FD_DINOV2 = ImagePreprocessing(resize=(224, 224), crop_size=None, resample="bicubic")


def _load_config(path_or_repo: str | os.PathLike, model_types: Sequence[str], what: str, hub_kwargs: dict) -> Any:
    """Read a transformers config and check that it is one of ``model_types`` (before loading any weights)."""
    from transformers import AutoConfig
    from transformers.utils import cached_file

    if not isinstance(path_or_repo, (str, os.PathLike)):
        raise TypeError(f"weights must be a folder or a Hub repo id, got {type(path_or_repo).__name__}")
    source = os.fspath(path_or_repo)
    # a repo id is "name" or "owner/name"; anything else that does not exist is a missing folder
    if not Path(source).exists() and (os.path.isabs(source) or source.startswith(".") or source.count("/") > 1):
        raise FileNotFoundError(f"no folder {source!r} (expected {what}: a save_pretrained folder or a repo id)")
    try:
        config = AutoConfig.from_pretrained(source, **hub_kwargs)
    except ValueError as err:  # a config.json without model_type, e.g. a diffusers model
        raise ValueError(f"{source!r} is not a transformers model (expected {what}): {err}") from err
    except OSError as err:
        raise OSError(
            f"cannot load {what} from {source!r}: {err}. Pass a local folder written by save_pretrained "
            "(config.json and model.safetensors) or a Hub repo id that is reachable or already in the Hugging "
            "Face cache."
        ) from err
    if config.model_type not in model_types:
        raise ValueError(
            f"{source!r} holds a {config.model_type!r} model, not {what} (expected model_type "
            f"{' or '.join(repr(t) for t in model_types)})"
        )
    # the commit of a Hub download (its snapshot folder), so cached statistics record which weights they used
    resolved = "" if Path(source).is_dir() else str(cached_file(source, "config.json", **hub_kwargs) or "")
    commit = re.search(r"snapshots/([0-9a-f]{40})/", Path(resolved).as_posix())
    return config, commit.group(1) if commit else ""


def fd_dinov2_preprocessing(arithmetic: str = "uint8") -> ImagePreprocessing:
    """FD_DINOv2's preprocessing (dgm-eval, EDM2): the whole image to 224x224 (bicubic), ImageNet mean/std."""
    return ImagePreprocessing(resize=(224, 224), crop_size=None, resample="bicubic", arithmetic=arithmetic)


class _TransformersExtractor(nn.Module):
    """Shared plumbing: preprocessing, device handling, forward contract, provenance."""

    name = ""

    def __init__(self, preprocessing: ImagePreprocessing, source: str, revision: str, feature: str) -> None:
        super().__init__()
        if not isinstance(preprocessing, ImagePreprocessing):
            raise TypeError(f"preprocessing must be an ImagePreprocessing, got {type(preprocessing).__name__}")
        self.preprocessing = preprocessing
        self.source = source
        self.revision = revision
        self.feature = feature

    def _finish(self) -> None:
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(
        self, images: torch.Tensor | np.ndarray, input_range: tuple[float, float] = (0.0, 1.0)
    ) -> torch.Tensor:
        """The network's ``pixel_values`` for a batch (see :class:`ImagePreprocessing`), on the model's device."""
        return self.preprocessing(images, input_range, device=self.device)

    def forward(
        self, images: torch.Tensor | np.ndarray, input_range: tuple[float, float] = (0.0, 1.0)
    ) -> FeatureExtractorOutput:
        """Features of a batch of images.

        Args:
            images: `(batch, 1 or 3, height, width)`; ``uint8`` pixels, or floats in ``input_range`` (grayscale is
                repeated to RGB).
            input_range (`tuple[float, float]`, defaults to `(0, 1)`): range of float inputs (``(-1, 1)`` for
                raw diffusion samples).

        Returns:
            :class:`FeatureExtractorOutput` with ``features`` `(batch, feature_dim)` and empty ``logits``
            `(batch, 0)` (these networks have no classifier head).
        """
        pixel_values = self.preprocess(images, input_range)
        features = self._embed(pixel_values.to(next(self.parameters()).dtype))
        return FeatureExtractorOutput(features=features, logits=features.new_zeros(features.shape[0], 0))

    def describe(self) -> dict[str, str]:
        """Provenance for the metadata of cached :class:`FeatureStatistics`: statistics are comparable only when
        all of it matches (weights, revision, feature and preprocessing)."""
        return {
            "extractor": self.name,
            "weights": self.source,
            "revision": self.revision,
            "feature": self.feature,
            "feature_dim": str(self.feature_dim),
            "preprocessing": json.dumps(self.preprocessing.to_dict(), sort_keys=True),
        }


class DINOv2Extractor(_TransformersExtractor):
    """DINOv2 CLS-token features (FD_DINOv2).

    Args:
        model (`transformers.Dinov2Model` or `Dinov2WithRegistersModel`): the network.
        preprocessing (`ImagePreprocessing`, *optional*): defaults to the FD_DINOv2 protocol (224x224 bicubic resize
            of the whole image, ImageNet mean/std).
        source (`str`, defaults to `""`): where the weights came from (for reports and cached statistics).
        revision (`str`, defaults to `""`): the Hub commit of the weights (empty for a local folder).
    """

    name = "dinov2"

    def __init__(
        self,
        model: nn.Module,
        preprocessing: ImagePreprocessing | None = None,
        source: str = "",
        revision: str = "",
    ) -> None:
        preprocessing = preprocessing or fd_dinov2_preprocessing()
        super().__init__(preprocessing, source, revision, "CLS token after the final layer norm (pooler_output)")
        self.model = model
        self._finish()

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike = DEFAULT_DINOV2_WEIGHTS,
        protocol: str = "fd_dinov2",
        arithmetic: str = "uint8",
        **hub_kwargs: Any,
    ) -> DINOv2Extractor:
        """Load a DINOv2 model from a folder or a Hub repo.

        Args:
            path_or_repo (`str` or `os.PathLike`, defaults to ``"facebook/dinov2-large"``): folder or repo id.
            protocol (`str`, defaults to `"fd_dinov2"`): ``"fd_dinov2"`` (the published FD_DINOv2 preprocessing) or
                ``"processor"`` (the repo's ``preprocessor_config.json``).
            arithmetic (`str`, defaults to `"uint8"`): resampling arithmetic, see :class:`ImagePreprocessing`
                (``"uint8"``: as Pillow / dgm-eval; ``"float"``: as EDM2's default).
            hub_kwargs: ``revision``, ``cache_dir``, ``local_files_only``, ``token``, ... for transformers' loaders.

        Raises:
            FileNotFoundError: a missing folder, or ``protocol="processor"`` without ``preprocessor_config.json``.
            ValueError: the folder/repo holds another kind of model.
        """
        from transformers import Dinov2Model, Dinov2WithRegistersModel

        if protocol not in ("fd_dinov2", "processor"):
            raise ValueError(f"protocol must be 'fd_dinov2' or 'processor', got {protocol!r}")
        config, revision = _load_config(path_or_repo, _DINOV2_TYPES, "a DINOv2 vision model", hub_kwargs)
        source = os.fspath(path_or_repo)
        if protocol == "processor":
            preprocessing = ImagePreprocessing.from_pretrained(source, arithmetic=arithmetic, **hub_kwargs)
        else:
            preprocessing = fd_dinov2_preprocessing(arithmetic)
        model_cls = Dinov2Model if config.model_type == "dinov2" else Dinov2WithRegistersModel
        model = model_cls.from_pretrained(source, config=config, **hub_kwargs)
        return cls(model, preprocessing, source=source, revision=revision)

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).pooler_output


class CLIPExtractor(_TransformersExtractor):
    """CLIP image embeddings, and text embeddings for the CLIP score.

    Args:
        vision_model (`transformers.CLIPVisionModel`): the image tower.
        visual_projection (`nn.Linear`): its projection into the joint image-text space.
        preprocessing (`ImagePreprocessing`): the image processor's preprocessing.
        source (`str`, defaults to `""`): where the weights came from.
        revision (`str`, defaults to `""`): the Hub commit of the weights (empty for a local folder).
        text_model (`transformers.CLIPTextModel`, *optional*), text_projection (`nn.Linear`, *optional*),
            tokenizer (*optional*): the text tower, for :meth:`encode_text`.
    """

    name = "clip"

    def __init__(
        self,
        vision_model: nn.Module,
        visual_projection: nn.Linear,
        preprocessing: ImagePreprocessing,
        source: str = "",
        revision: str = "",
        text_model: nn.Module | None = None,
        text_projection: nn.Linear | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(preprocessing, source, revision, "image embedding (visual_projection of the pooled output)")
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.text_model = text_model
        self.text_projection = text_projection
        self.tokenizer = tokenizer
        self._finish()

    @property
    def feature_dim(self) -> int:
        return int(self.visual_projection.out_features)

    @property
    def has_text(self) -> bool:
        """Whether :meth:`encode_text` is available (loaded with ``with_text=True``)."""
        return self.text_model is not None and self.tokenizer is not None

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike = DEFAULT_CLIP_WEIGHTS,
        with_text: bool = False,
        arithmetic: str = "uint8",
        **hub_kwargs: Any,
    ) -> CLIPExtractor:
        """Load CLIP from a folder or a Hub repo (a full ``CLIPModel`` or a ``CLIPVisionModelWithProjection``).

        The preprocessing is the repo's ``preprocessor_config.json``; without one, CLIP's own (shorter side to the
        model's image size, centre crop, bicubic, OpenAI mean/std).

        Args:
            path_or_repo (`str` or `os.PathLike`, defaults to ``"openai/clip-vit-large-patch14"``): folder or repo id.
            with_text (`bool`, defaults to `False`): also keep the text tower and load the tokenizer (needs a full
                ``CLIPModel`` with its tokenizer files), for the CLIP score.
            arithmetic (`str`, defaults to `"uint8"`): resampling arithmetic, see :class:`ImagePreprocessing`.
            hub_kwargs: ``revision``, ``cache_dir``, ``local_files_only``, ``token``, ... for transformers' loaders.

        Raises:
            FileNotFoundError: a missing folder, or ``with_text=True`` without tokenizer files.
            ValueError: the folder/repo holds another kind of model, or no text tower for ``with_text=True``.
        """
        from transformers import AutoTokenizer, CLIPModel, CLIPVisionModelWithProjection

        if not isinstance(with_text, bool):
            raise TypeError(f"with_text must be a bool, got {type(with_text).__name__}")
        config, revision = _load_config(path_or_repo, _CLIP_TYPES, "a CLIP model", hub_kwargs)
        source = os.fspath(path_or_repo)
        if with_text and config.model_type != "clip":
            raise ValueError(
                f"{source!r} is a vision-only CLIP model ({config.model_type!r}); the CLIP score needs the text "
                "tower too (a full CLIPModel checkpoint with its tokenizer)"
            )
        try:
            preprocessing = ImagePreprocessing.from_pretrained(source, arithmetic=arithmetic, **hub_kwargs)
        except FileNotFoundError:
            size = (config.vision_config if config.model_type == "clip" else config).image_size
            preprocessing = ImagePreprocessing(
                resize=size,
                crop_size=(size, size),
                resample="bicubic",
                image_mean=OPENAI_CLIP_MEAN,
                image_std=OPENAI_CLIP_STD,
                arithmetic=arithmetic,
            )
        text_parts: dict[str, Any] = {}
        if config.model_type == "clip":
            # the full model: CLIPVisionModelWithProjection would not take projection_dim from the top-level config
            model = CLIPModel.from_pretrained(source, config=config, **hub_kwargs)
            vision, projection = model.vision_model, model.visual_projection
            if with_text:
                try:
                    tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
                except (OSError, ValueError) as err:
                    msg = f"no CLIP tokenizer in {source!r} (needed for the CLIP score): {err}"
                    raise FileNotFoundError(msg) from err
                # without tokenizer files transformers builds an empty default one instead of failing
                if len(tokenizer) != config.text_config.vocab_size:
                    raise FileNotFoundError(
                        f"no CLIP tokenizer for this model in {source!r} (needed for the CLIP score): the tokenizer "
                        f"found has {len(tokenizer)} tokens, the text model {config.text_config.vocab_size}; save "
                        "the model's tokenizer (tokenizer.json, or vocab.json and merges.txt) beside it"
                    )
                text_parts = {
                    "text_model": model.text_model,
                    "text_projection": model.text_projection,
                    "tokenizer": tokenizer,
                }
        else:
            model = CLIPVisionModelWithProjection.from_pretrained(source, config=config, **hub_kwargs)
            vision, projection = model.vision_model, model.visual_projection
        return cls(vision, projection, preprocessing, source=source, revision=revision, **text_parts)

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.vision_model.config.image_size
        resized = tuple(pixel_values.shape[-2:]) != (size, size)
        out = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=resized)
        return self.visual_projection(out.pooler_output)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """CLIP text embeddings (the joint space of the image features), float32 on the CPU, shape `(len(texts), d)`.

        Texts longer than the model's context are truncated.
        """
        if not self.has_text:
            raise ValueError("this CLIPExtractor has no text tower: load it with from_pretrained(..., with_text=True)")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or len(texts) == 0:
            raise TypeError("texts must be a non-empty sequence of strings")
        max_length = int(self.text_model.config.max_position_embeddings)
        out = []
        for first in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                list(texts[first : first + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(self.device)
            pooled = self.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            out.append(self.text_projection(pooled.pooler_output).float().cpu())
        return torch.cat(out)


def load_transformers_extractor(
    name: str, weights: str | os.PathLike | None = None, **options: Any
) -> DINOv2Extractor | CLIPExtractor:
    """``"dinov2"`` or ``"clip"`` from ``weights`` (a folder or repo id; the ViT-L/14 repos by default)."""
    if name == "dinov2":
        return DINOv2Extractor.from_pretrained(weights or DEFAULT_DINOV2_WEIGHTS, **options)
    if name == "clip":
        return CLIPExtractor.from_pretrained(weights or DEFAULT_CLIP_WEIGHTS, **options)
    raise ValueError(f"name must be 'dinov2' or 'clip', got {name!r}")


def class_prompts(
    num_classes: int, class_names: Sequence[str] | None = None, data: str | None = None, template: str | None = None
) -> list[str]:
    """CLIP prompts for the classes ``0 .. num_classes - 1`` of a class-conditional model.

    Args:
        num_classes (`int`): classes of the model.
        class_names (`Sequence[str]`, *optional*): name of each class; defaults to the classes of a built-in data
            set ``data`` (``"cifar10"``: CIFAR-10's names; ``"digits"`` / ``"mnist"``: ``"0"`` .. ``"9"``).
        data (`str`, *optional*): the data set the model was trained on.
        template (`str`, *optional*): prompt with one ``{}``; defaults to ``"a photo of a {}."`` (digits:
            ``'a photo of the number: "{}".'``).

    Raises:
        ValueError: no names for a data set that is not built in, or as many names as classes.
    """
    from .datasets import CIFAR10_CLASSES

    digits = data in ("digits", "mnist")
    if class_names is None:
        if data == "cifar10":
            class_names = CIFAR10_CLASSES
        elif digits:
            class_names = [str(d) for d in range(10)]
        else:
            raise ValueError(f"the classes of {data!r} have no default names: pass the class names")
    names = list(class_names)
    if len(names) != num_classes or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"the model has {num_classes} classes: give as many non-empty class names, got {names}")
    template = template or (DIGIT_PROMPT if digits else CLIP_PROMPT)
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"template must contain exactly one '{{}}', got {template!r}")
    return [template.format(n.strip()) for n in names]


def class_clip_score(
    extractor: CLIPExtractor,
    images: torch.Tensor | np.ndarray | Iterable[torch.Tensor],
    labels: torch.Tensor | np.ndarray | Sequence[int],
    class_names: Sequence[str],
    template: str = CLIP_PROMPT,
    batch_size: int = 64,
    input_range: tuple[float, float] = (0.0, 1.0),
    scale: float = 100.0,
) -> CLIPScoreOutput:
    """CLIP score of class-conditional samples against their class names (and CLIP's zero-shot accuracy on them).

    Each class name is put into ``template`` (``"a photo of a {}."``); sample ``i`` is compared with the prompt of
    ``labels[i]``. See :func:`~sde_diffusers.evaluation.metrics.clip_score` for the definition.

    Args:
        extractor (`CLIPExtractor`): loaded with ``with_text=True``.
        images: `(N, C, H, W)` samples (or an iterable of batches), in ``input_range``.
        labels: `(N,)` class index of each sample.
        class_names (`Sequence[str]`): name of each class index.
        template (`str`, defaults to `"a photo of a {}."`): prompt with one ``{}``.
        batch_size (`int`, defaults to 64): images per forward pass.
        input_range (`tuple[float, float]`, defaults to `(0, 1)`): range of float pixels.
        scale (`float`, defaults to 100): multiplies the cosine similarity (torchmetrics' convention).

    Returns:
        :class:`CLIPScoreOutput`.
    """
    from .extractors import extract_features

    if not isinstance(extractor, CLIPExtractor):
        raise TypeError(f"extractor must be a CLIPExtractor, got {type(extractor).__name__}")
    if isinstance(class_names, str) or not class_names:
        raise TypeError("class_names must be a non-empty sequence of strings")
    prompts = class_prompts(len(class_names), class_names, template=template)
    if not extractor.has_text:
        raise ValueError("the CLIP score needs the text tower: load the extractor with with_text=True")
    texts = extractor.encode_text(prompts)
    image_embeds = extract_features(extractor, images, batch_size=batch_size, input_range=input_range).features
    return clip_score(image_embeds, texts, labels=labels, scale=scale)
