"""Sample-quality metrics computed in a feature space.

All metrics take feature matrices of shape ``(num_samples, feature_dim)`` (numpy arrays or torch tensors,
any float dtype) and work in float64, because the Fréchet distance subtracts traces of ``d x d`` matrices
whose entries can be large and whose difference is small.

* :func:`frechet_distance` — Fréchet distance between Gaussians fitted to two sets (FID in Inception space,
  "domain FID" in a classifier's feature space). Takes features or cached :class:`FeatureStatistics`.
* :func:`kernel_distance` — unbiased squared MMD with the cubic polynomial kernel (KID, Bińkowski et al.
  2018), averaged over random subsets.
* :func:`inception_score` — Inception Score (Salimans et al. 2016) from classifier logits.
* :func:`precision_recall` — improved precision and recall (Kynkäänniemi et al. 2019) from k-NN manifolds.
* :func:`clip_score` — CLIP score (Hessel et al. 2021) between image and text embeddings, with zero-shot accuracy.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CLIPScoreOutput",
    "FeatureStatistics",
    "InceptionScoreOutput",
    "KernelDistanceOutput",
    "PrecisionRecallOutput",
    "frechet_distance",
    "gaussian_frechet_distance",
    "clip_score",
    "inception_score",
    "kernel_distance",
    "precision_recall",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_features(features: ArrayLike, name: str, min_samples: int = 2) -> np.ndarray:
    """Validate a ``(num_samples, feature_dim)`` feature matrix and return it as float64 numpy."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    elif isinstance(features, np.ndarray):
        if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got dtype {features.dtype}")
        features = features.astype(np.float64, copy=False)
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(
            f"{name} must have shape (num_samples, feature_dim), got shape {tuple(features.shape)}; "
            "flatten or extract features first"
        )
    if features.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples, got {features.shape[0]}")
    if features.shape[1] < 1:
        raise ValueError(f"{name} has no feature dimensions (shape {tuple(features.shape)})")
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(axis=1).sum())
        raise ValueError(f"{name} contains NaN or infinite values ({bad} of {features.shape[0]} samples)")
    return features


def _check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} live in different feature spaces: feature_dim {a.shape[1]} vs "
            f"{b.shape[1]}; extract both with the same feature extractor"
        )


# ---------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------
@dataclass
class FeatureStatistics:
    """Mean and covariance of a set of features: everything the Fréchet distance needs from a reference set.

    Saved as ``.npz`` with keys ``mu`` and ``sigma`` (the layout of pytorch-fid's precomputed statistics,
    so those files load here too) or as ``.safetensors`` with the same tensor names.

    Args:
        mean (`np.ndarray` of shape `(feature_dim,)`): feature mean.
        cov (`np.ndarray` of shape `(feature_dim, feature_dim)`): unbiased feature covariance (``ddof=1``).
        num_samples (`int`, *optional*): number of samples the statistics were computed from (0 if unknown).
        metadata (`dict[str, str]`): free-form provenance (feature extractor, data set, ...), saved alongside.
    """

    mean: np.ndarray
    cov: np.ndarray
    num_samples: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float64)
        self.cov = np.ascontiguousarray(self.cov, dtype=np.float64)
        if self.mean.ndim != 1:
            raise ValueError(f"mean must be 1-D (feature_dim,), got shape {self.mean.shape}")
        d = self.mean.shape[0]
        if self.cov.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}) to match mean, got {self.cov.shape}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.cov).all()):
            raise ValueError("mean and cov must be finite")
        if not isinstance(self.num_samples, (int, np.integer)) or self.num_samples < 0:
            raise ValueError(f"num_samples must be a non-negative integer, got {self.num_samples!r}")
        self.num_samples = int(self.num_samples)
        self.metadata = {str(k): str(v) for k, v in dict(self.metadata).items()}

    @property
    def feature_dim(self) -> int:
        """Dimension of the feature space."""
        return int(self.mean.shape[0])

    @classmethod
    def from_features(
        cls,
        features: ArrayLike,
        allow_small_sample: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> FeatureStatistics:
        """Fit mean and unbiased covariance to ``features`` of shape ``(num_samples, feature_dim)``.

        Args:
            features: the feature matrix.
            allow_small_sample (`bool`, defaults to `False`): with ``num_samples <= feature_dim`` the covariance
                has rank at most ``num_samples - 1`` (singular) and the Fréchet distance is strongly biased
                upwards. By default this raises a `ValueError`; set `True` to compute anyway with a warning.
            metadata (`dict[str, str]`, *optional*): provenance stored with the statistics.

        Returns:
            `FeatureStatistics`
        """
        x = _as_features(features, "features")
        n, d = x.shape
        if n <= d:
            msg = (
                f"{n} samples of {d}-dimensional features: the covariance needs more samples than feature "
                f"dimensions (rank <= {n - 1} < {d}), so the Fréchet distance would be strongly biased"
            )
            if not allow_small_sample:
                raise ValueError(
                    msg + "; use more samples than feature dimensions (10x is a good rule), or pass "
                    "allow_small_sample=True to get the biased value with a warning"
                )
            warnings.warn(msg + "; computing it anyway (allow_small_sample=True)", UserWarning, stacklevel=2)
        mean = x.mean(axis=0)
        centred = x - mean
        cov = centred.T @ centred / (n - 1)
        return cls(mean=mean, cov=cov, num_samples=n, metadata=dict(metadata or {}))

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (``.npz`` or ``.safetensors``, chosen by the suffix). Returns the path."""
        path = Path(path)
        if path.suffix == ".npz":
            np.savez(
                path,
                mu=self.mean,
                sigma=self.cov,
                num_samples=np.asarray(self.num_samples, dtype=np.int64),
                metadata=np.asarray(json.dumps(self.metadata, sort_keys=True)),
            )
        elif path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            meta = dict(self.metadata)
            meta["num_samples"] = str(self.num_samples)
            save_file({"mu": self.mean, "sigma": self.cov}, str(path), metadata=meta)
        else:
            raise ValueError(f"path must end in .npz or .safetensors, got {str(path)!r}")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        """Read statistics written by :meth:`save` (or a pytorch-fid ``.npz`` with ``mu``/``sigma``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no feature statistics file at {str(path)!r}")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                keys = set(f.keys())
                if not {"mu", "sigma"} <= keys:
                    raise ValueError(f"{str(path)!r} must hold tensors 'mu' and 'sigma', found {sorted(keys)}")
                mean, cov = f.get_tensor("mu"), f.get_tensor("sigma")
                meta = dict(f.metadata() or {})
            num_samples = int(meta.pop("num_samples", 0))
            return cls(mean=mean, cov=cov, num_samples=num_samples, metadata=meta)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if not {"mu", "sigma"} <= set(f.files):
                    raise ValueError(f"{str(path)!r} must hold arrays 'mu' and 'sigma', found {sorted(f.files)}")
                num_samples = int(f["num_samples"]) if "num_samples" in f.files else 0
                meta = json.loads(str(f["metadata"])) if "metadata" in f.files else {}
                return cls(mean=f["mu"], cov=f["sigma"], num_samples=num_samples, metadata=meta)
        raise ValueError(f"path must end in .npz or .safetensors, got {str(path)!r}")


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negative round-off
    eigenvalues clipped to zero), which stays real where a general ``sqrtm`` returns complex noise."""
    sym = 0.5 * (matrix + matrix.T)
    eigval, eigvec = np.linalg.eigh(sym)
    return (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T


def gaussian_frechet_distance(mean1: ArrayLike, cov1: ArrayLike, mean2: ArrayLike, cov2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein squared) distance between ``N(mean1, cov1)`` and ``N(mean2, cov2)``.

    ``||m1 - m2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2})``. The trace of the matrix square root is computed
    as ``tr((C1^{1/2} C2 C1^{1/2})^{1/2})``, a symmetric PSD matrix with the same eigenvalues as ``C1 C2``, so
    only symmetric eigendecompositions are needed (float64, no complex parts even for singular ``C1``).

    Args:
        mean1, mean2: means of shape `(d,)`.
        cov1, cov2: covariances of shape `(d, d)` (symmetric positive semi-definite).

    Returns:
        `float`: the distance, clipped at 0 to remove round-off below zero.
    """
    s1 = FeatureStatistics(mean=_to_numpy(mean1), cov=_to_numpy(cov1))
    s2 = FeatureStatistics(mean=_to_numpy(mean2), cov=_to_numpy(cov2))
    if s1.feature_dim != s2.feature_dim:
        raise ValueError(f"the two Gaussians have different dimensions: {s1.feature_dim} vs {s2.feature_dim}")
    diff = s1.mean - s2.mean
    root1 = _psd_sqrt(s1.cov)
    middle = root1 @ s2.cov @ root1
    eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    value = float(diff @ diff + np.trace(s1.cov) + np.trace(s2.cov) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def frechet_distance(
    x: ArrayLike | FeatureStatistics,
    y: ArrayLike | FeatureStatistics,
    allow_small_sample: bool = False,
) -> float:
    """Fréchet distance between two sample sets in a feature space (FID when the features are Inception's).

    Args:
        x, y: each either a feature matrix of shape `(num_samples, feature_dim)` or precomputed
            :class:`FeatureStatistics` (e.g. cached statistics of the reference data).
        allow_small_sample (`bool`, defaults to `False`): see :meth:`FeatureStatistics.from_features`.

    Returns:
        `float`: the distance (0 for identical statistics; lower is better).
    """
    sx = x if isinstance(x, FeatureStatistics) else FeatureStatistics.from_features(x, allow_small_sample)
    sy = y if isinstance(y, FeatureStatistics) else FeatureStatistics.from_features(y, allow_small_sample)
    if sx.feature_dim != sy.feature_dim:
        raise ValueError(
            f"x and y live in different feature spaces: feature_dim {sx.feature_dim} vs {sy.feature_dim}; "
            "extract both with the same feature extractor"
        )
    return gaussian_frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov)


# ---------------------------------------------------------------------------------------------------
# Kernel (Inception) distance
# ---------------------------------------------------------------------------------------------------
@dataclass
class KernelDistanceOutput:
    """Result of :func:`kernel_distance`.

    Args:
        mean (`float`): mean of the unbiased MMD^2 estimates over subsets (the KID).
        std (`float`): their standard deviation (``ddof=0``).
        subset_values (`np.ndarray` of shape `(num_subsets,)`): the per-subset estimates.
    """

    mean: float
    std: float
    subset_values: np.ndarray = field(repr=False)


def _polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (a @ b.T) + coef0) ** degree


def kernel_distance(
    x: ArrayLike,
    y: ArrayLike,
    subset_size: int | None = None,
    num_subsets: int = 100,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> KernelDistanceOutput:
    """Kernel distance (KID): unbiased squared MMD with ``k(a, b) = (gamma a.b + coef0)^degree``.

    The defaults (``degree=3``, ``gamma=1/feature_dim``, ``coef0=1``) are the cubic kernel of Bińkowski et
    al. (2018). Each subset draws ``subset_size`` rows of ``x`` and of ``y`` without replacement; the
    estimate of a subset is ``mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j) - 2 mean_{i,j} k(x_i,y_j)``, which
    is unbiased (so it can be slightly negative for identical distributions).

    Args:
        x, y: feature matrices of shapes `(n_x, d)` and `(n_y, d)`.
        subset_size (`int`, *optional*): rows per subset; defaults to ``min(1000, n_x, n_y)``.
        num_subsets (`int`, defaults to 100): number of random subsets.
        degree, gamma, coef0: the polynomial kernel.
        seed (`int`, defaults to 0): seed of the subset draws (the result is deterministic given it).

    Returns:
        :class:`KernelDistanceOutput`
    """
    fx = _as_features(x, "x")
    fy = _as_features(y, "y")
    _check_same_dim(fx, fy, "x", "y")
    n_x, n_y, d = fx.shape[0], fy.shape[0], fx.shape[1]
    if subset_size is None:
        subset_size = min(1000, n_x, n_y)
    if not isinstance(subset_size, int) or isinstance(subset_size, bool) or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    if subset_size > min(n_x, n_y):
        raise ValueError(
            f"subset_size={subset_size} exceeds the smaller sample set (x has {n_x}, y has {n_y} samples)"
        )
    if not isinstance(num_subsets, int) or isinstance(num_subsets, bool) or num_subsets < 1:
        raise ValueError(f"num_subsets must be a positive integer, got {num_subsets!r}")
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ValueError(f"degree must be a positive integer, got {degree!r}")
    gamma = 1.0 / d if gamma is None else float(gamma)
    if not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a finite positive number, got {gamma}")

    rng = np.random.default_rng(seed)
    m = subset_size
    values = np.empty(num_subsets, dtype=np.float64)
    for s in range(num_subsets):
        a = fx[rng.choice(n_x, m, replace=False)]
        b = fy[rng.choice(n_y, m, replace=False)]
        k_aa = _polynomial_kernel(a, a, degree, gamma, coef0)
        k_bb = _polynomial_kernel(b, b, degree, gamma, coef0)
        k_ab = _polynomial_kernel(a, b, degree, gamma, coef0)
        within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
        values[s] = within - 2.0 * k_ab.mean()
    return KernelDistanceOutput(mean=float(values.mean()), std=float(values.std()), subset_values=values)


# ---------------------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------------------
@dataclass
class InceptionScoreOutput:
    """Result of :func:`inception_score`.

    Args:
        mean (`float`): mean score over splits.
        std (`float`): standard deviation over splits (``ddof=0``).
        split_scores (`np.ndarray` of shape `(num_splits,)`): the per-split scores.
    """

    mean: float
    std: float
    split_scores: np.ndarray = field(repr=False)


def inception_score(logits: ArrayLike, num_splits: int = 10) -> InceptionScoreOutput:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` from classifier logits.

    The samples are cut into ``num_splits`` contiguous splits; ``p(y)`` is the mean class distribution of
    a split. It ranges from 1 (every sample gets the same prediction, or predictions are uniform) to the
    number of classes (confident predictions, classes equally frequent).

    Args:
        logits: unnormalised class scores of shape `(num_samples, num_classes)` (log-probabilities work too).
        num_splits (`int`, defaults to 10): number of splits.

    Returns:
        :class:`InceptionScoreOutput`
    """
    z = _as_features(logits, "logits", min_samples=1)
    if z.shape[1] < 2:
        raise ValueError(f"logits need at least 2 classes, got shape {z.shape}")
    if not isinstance(num_splits, int) or isinstance(num_splits, bool) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive integer, got {num_splits!r}")
    if num_splits > z.shape[0]:
        raise ValueError(f"num_splits={num_splits} exceeds the number of samples ({z.shape[0]})")
    log_p = torch.log_softmax(torch.from_numpy(z), dim=1).numpy()
    scores = np.empty(num_splits, dtype=np.float64)
    for i, part in enumerate(np.array_split(log_p, num_splits)):
        p = np.exp(part)
        log_marginal = np.log(p.mean(axis=0))
        kl = (p * (part - log_marginal)).sum(axis=1)
        scores[i] = math.exp(float(kl.mean()))
    return InceptionScoreOutput(mean=float(scores.mean()), std=float(scores.std()), split_scores=scores)


# ---------------------------------------------------------------------------------------------------
# Precision / recall
# ---------------------------------------------------------------------------------------------------
@dataclass
class PrecisionRecallOutput:
    """Result of :func:`precision_recall`.

    Args:
        precision (`float`): fraction of generated samples inside the real-data manifold (fidelity).
        recall (`float`): fraction of real samples inside the generated-data manifold (coverage).
    """

    precision: float
    recall: float


def _knn_radii(points: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for chunk in points.split(batch_size):
        dist = torch.cdist(chunk, points)
        # the (k+1)-th smallest, because each point's distance to itself (0) is the smallest
        radii.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of ``queries`` that fall inside at least one ball ``(centre, radius)``."""
    inside = 0
    for chunk in queries.split(batch_size):
        dist = torch.cdist(chunk, centres)
        inside += int((dist <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3, batch_size: int = 1024) -> PrecisionRecallOutput:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its samples, with radius the distance to the sample's
    ``k``-th nearest neighbour in its own set. Precision is the fraction of ``fake`` inside the real manifold,
    recall the fraction of ``real`` inside the fake manifold.

    Args:
        real: real features of shape `(n_real, d)`.
        fake: generated features of shape `(n_fake, d)`.
        k (`int`, defaults to 3): neighbourhood size (the paper's default).
        batch_size (`int`, defaults to 1024): rows per pairwise-distance block (memory ``batch_size * n``).

    Returns:
        :class:`PrecisionRecallOutput`
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    fr = _as_features(real, "real", min_samples=k + 1)
    ff = _as_features(fake, "fake", min_samples=k + 1)
    _check_same_dim(fr, ff, "real", "fake")
    tr, tf = torch.from_numpy(fr), torch.from_numpy(ff)
    radii_real = _knn_radii(tr, k, batch_size)
    radii_fake = _knn_radii(tf, k, batch_size)
    return PrecisionRecallOutput(
        precision=_coverage(tf, tr, radii_real, batch_size),
        recall=_coverage(tr, tf, radii_fake, batch_size),
    )


# ---------------------------------------------------------------------------------------------------
# CLIP score
# ---------------------------------------------------------------------------------------------------
@dataclass
class CLIPScoreOutput:
    """Result of :func:`clip_score`.

    Args:
        score (`float`): mean over images of ``scale * max(cos(image, text), 0)``.
        std (`float`): standard deviation of the per-image scores (``ddof=0``).
        accuracy (`float`, *optional*): with ``labels``, the fraction of images whose most similar text is their
            own (CLIP's zero-shot classification of the samples); `None` for paired texts.
        per_image (`np.ndarray` of shape `(num_images,)`): the per-image scores.
    """

    score: float
    std: float
    accuracy: float | None = None
    per_image: np.ndarray = field(default=None, repr=False)


def clip_score(
    image_embeds: ArrayLike,
    text_embeds: ArrayLike,
    labels: ArrayLike | list[int] | None = None,
    scale: float = 100.0,
) -> CLIPScoreOutput:
    """CLIP score: ``scale * max(cos(image_i, text_i), 0)`` averaged over images (Hessel et al. 2021).

    The default ``scale=100`` is torchmetrics' convention (Hessel et al. use 2.5). The cosine is invariant to the
    embeddings' norms, so unnormalised CLIP embeddings can be passed.

    Args:
        image_embeds: `(num_images, d)` CLIP image embeddings.
        text_embeds: `(num_texts, d)` CLIP text embeddings: one per image (``labels=None``), or one per class.
        labels (*optional*): `(num_images,)` integer index into ``text_embeds`` for each image (class-conditional
            samples against their class prompts); also gives the zero-shot accuracy.
        scale (`float`, defaults to 100): multiplies the clipped cosine.

    Returns:
        :class:`CLIPScoreOutput`
    """
    img = _as_features(image_embeds, "image_embeds", min_samples=1)
    txt = _as_features(text_embeds, "text_embeds", min_samples=1)
    _check_same_dim(img, txt, "image_embeds", "text_embeds")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    img_norm, txt_norm = np.linalg.norm(img, axis=1), np.linalg.norm(txt, axis=1)
    if (img_norm == 0).any() or (txt_norm == 0).any():
        raise ValueError("image_embeds and text_embeds must not contain zero vectors (no direction to compare)")
    img, txt = img / img_norm[:, None], txt / txt_norm[:, None]
    accuracy = None
    if labels is None:
        if txt.shape[0] != img.shape[0]:
            raise ValueError(
                f"without labels, text_embeds pairs with image_embeds row by row: got {img.shape[0]} images and "
                f"{txt.shape[0]} texts"
            )
        cos = (img * txt).sum(axis=1)
    else:
        idx = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if idx.shape != (img.shape[0],) or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"labels must be {img.shape[0]} integers (one per image), got shape {idx.shape}")
        if idx.min() < 0 or idx.max() >= txt.shape[0]:
            raise ValueError(f"labels must index the {txt.shape[0]} texts, got values in [{idx.min()}, {idx.max()}]")
        similarity = img @ txt.T
        cos = similarity[np.arange(len(idx)), idx]
        accuracy = float((similarity.argmax(axis=1) == idx).mean())
    per_image = float(scale) * np.clip(cos, 0.0, None)
    return CLIPScoreOutput(
        score=float(per_image.mean()), std=float(per_image.std()), accuracy=accuracy, per_image=per_image
    )
