"""The corruptions the trainer knows, one :class:`TrainingCorruption` strategy each (``--corruption NAME``).

* ``gaussian`` (:mod:`.gaussian`): score SDE training, VE / VP / sub-VP, exported as a ``ScoreSdePipeline``.
* ``blur`` (:mod:`.blur`): Soft Diffusion's blur + noise, exported as a ``SoftDiffusionPipeline``.

A third corruption is one new module with a :class:`TrainingCorruption` subclass, listed here and in
``config.CORRUPTION_TYPES`` (its maths lives in :mod:`sde_diffusers.corruption` and :mod:`sde_diffusers.losses`).
"""

from __future__ import annotations

from ..config import CORRUPTION_TYPES
from .base import DEFAULTS, TrainingCorruption
from .blur import BlurTraining
from .gaussian import GaussianTraining

__all__ = ["CORRUPTIONS", "TrainingCorruption", "GaussianTraining", "BlurTraining", "foreign_options", "DEFAULTS"]

CORRUPTIONS: dict[str, TrainingCorruption] = {c.name: c for c in (GaussianTraining(), BlurTraining())}
if tuple(CORRUPTIONS) != CORRUPTION_TYPES:  # the command line offers exactly the registered strategies
    raise ImportError(f"config.CORRUPTION_TYPES {CORRUPTION_TYPES} != registered corruptions {tuple(CORRUPTIONS)}")


def foreign_options(corruption: TrainingCorruption) -> dict[str, str]:
    """Options owned by the other corruptions (name -> owner's ``--corruption`` value)."""
    return {
        option: other.name
        for other in CORRUPTIONS.values()
        if other is not corruption
        for option in other.own_options
        if option not in corruption.own_options
    }
