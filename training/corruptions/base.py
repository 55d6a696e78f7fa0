"""The interface between the trainer and a corruption: everything the trainer asks instead of branching on a name.

A :class:`TrainingCorruption` answers, for one ``--corruption``: which options it uses (and why the others do not
apply), how to build the scheduler it samples and exports with, how to draw training times, the loss of a
micro-batch (a call into :mod:`sde_diffusers.losses`; no loss maths here), what to save with a checkpoint, which
pipeline class and model card to export, and how to describe itself in logs and cards.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..config import TrainingConfig, TrainingInputError

__all__ = ["TrainingCorruption", "DEFAULTS"]

#: The value of every option when it is not given.
DEFAULTS = TrainingConfig()


class TrainingCorruption(abc.ABC):
    """What the trainer needs to know about one corruption (a strategy; one subclass per ``--corruption``)."""

    #: The ``--corruption`` value.
    name: ClassVar[str]
    #: Options that only this corruption uses: name -> what it is (for messages when another corruption is chosen).
    own_options: ClassVar[dict[str, str]] = {}
    #: The pipeline class (in ``sde_diffusers.pipelines``) that the trainer exports and samples grids with.
    pipeline_class: ClassVar[type]
    #: The model card template (in ``sde_diffusers.model_cards``).
    model_card: ClassVar[str]
    #: Whether held-out bits/dim can be measured (``--eval_bpd_images``).
    has_likelihood: ClassVar[bool] = False

    # ---- options --------------------------------------------------------------------------------------
    def refuse_foreign_options(self, cfg: TrainingConfig, foreign: dict[str, str]) -> None:
        """Raise for every option of another corruption (``foreign``: name -> owner) given a non-default value.

        Subclasses give specific reasons through :meth:`refusal`; the message names the option and its owner.
        """
        given = {k: getattr(cfg, k) for k in foreign if getattr(cfg, k) != getattr(DEFAULTS, k)}
        if given:
            raise TrainingInputError(self.refusal(given, foreign))

    def refusal(self, given: dict[str, Any], foreign: dict[str, str]) -> str:
        """The message refusing the options ``given`` (name -> value) that belong to other corruptions."""
        name = next(iter(given))
        return f"--{name} applies to --corruption {foreign[name]} only, not to --corruption {self.name}; leave it out"

    @abc.abstractmethod
    def check(self, cfg: TrainingConfig, preset: Any) -> dict[str, Any]:
        """Check the options this corruption uses against each other and the model preset (writing nothing).

        Returns:
            `dict`: options resolved from their defaults (e.g. ``reduce_mean``), to apply to the config.
        """

    def resolve_with_data(self, cfg: TrainingConfig, data: Any) -> dict[str, Any]:
        """Options whose defaults depend on the training data (e.g. VE's ``sigma_max``)."""
        return {}

    # ---- training ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_scheduler(self, cfg: TrainingConfig, data: Any, resume_dir: Path | None) -> Any:
        """The scheduler the model is trained for, sampled and exported with (read from a checkpoint if it has one)."""

    @abc.abstractmethod
    def describe(self, cfg: TrainingConfig) -> str:
        """What the model is trained on, for the log (e.g. "the vp SDE")."""

    @abc.abstractmethod
    def sample_times(
        self, cfg: TrainingConfig, scheduler: Any, batch: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """The training times (or indices) of a global micro-batch, drawn from ``generator``."""

    @abc.abstractmethod
    def loss(
        self,
        cfg: TrainingConfig,
        scheduler: Any,
        model: torch.nn.Module,
        raw_model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None,
        times: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """The loss of a micro-batch (``model`` may be wrapped by DDP; ``raw_model`` is the unwrapped network)."""

    def save_with_checkpoint(self, scheduler: Any, folder: Path) -> list[str]:
        """Write what a resumed run must read back (beyond weights and optimizer) into ``folder``; the files."""
        return []

    # ---- export -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def card_fields(self, cfg: TrainingConfig, scheduler: Any, final_loss: float | None) -> dict[str, Any]:
        """The model card fields specific to this corruption (the template's corruption / SDE row, ``final_loss``,
        ``model_name``)."""

    def bits_per_dim_note(self) -> str | None:
        """Why bits/dim is not reported (``None`` when it can be measured)."""
        return None

    @abc.abstractmethod
    def commit_label(self, cfg: TrainingConfig) -> str:
        """A few words for the Hub commit message (e.g. "vp SDE")."""

    def public_config(self, values: dict[str, Any], foreign: dict[str, str]) -> dict[str, Any]:
        """The published training options: without the options of other corruptions (they do not apply)."""
        return {k: v for k, v in values.items() if k not in foreign}
