"""Conditioning: what a pipeline hands to the one sampling loop besides the network and the scheduler.

The loop (:meth:`~sde_diffusers.pipelines.ScoreSdePipelineBase._sample`) draws a start, then for every entry of
``scheduler.timesteps`` calls the network, adds the :class:`ScoreTerm` s to its score, lets ``after_model`` modify
the output, takes the scheduler's step and lets ``after_step`` modify the new sample. A pipeline differs from another
only in the :class:`Conditioning` it builds:

* class-conditional generation: ``class_labels`` for a label-conditional network, or :class:`ClassifierGuidance`;
* linear inverse problems (inpainting, colorization): an observation-likelihood score term and/or a projection of
  the known component after every step (``pipeline_score_sde_inverse.py``);
* Soft Diffusion: its own start (the most corrupted level) and, for inpainting, the observation pasted into the
  network's clean estimate (``pipeline_soft_diffusion.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sde_diffusers.parameterization import model_time
from sde_diffusers.scheduler_sde import SchedulerSDE

__all__ = ["ScoreTerm", "ClassifierGuidance", "Conditioning"]


class ScoreTerm(abc.ABC):
    """A term added to the score during sampling: ``score + term(x, t, score, view)``.

    ``view`` is the scheduler's :class:`~sde_diffusers.scheduler_sde.SchedulerSDE`: its ``sde`` and the marginals the
    network was trained with (``view.marginal_coeffs(t)``, ``view.to_x0``), which for DDPM-family models are the
    discrete chain's (nonzero at timestep 0, where the continuous VP std vanishes).

    Subclasses implement :meth:`__call__`. With ``needs_model_graph = True`` the network runs with gradients
    enabled and ``score`` keeps its graph to ``x`` (for terms that differentiate through the network, such as the
    likelihood of an observation given Tweedie's denoised estimate); otherwise ``score`` is detached.
    """

    needs_model_graph: bool = False
    #: Whether the term differentiates the network twice (double backward), which needs the math attention kernel.
    needs_second_order: bool = False

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, view: SchedulerSDE) -> torch.Tensor:
        """The term at ``(x, t)`` given the model's ``score`` there (shape of ``x``)."""


class ClassifierGuidance(ScoreTerm):
    """``scale * grad_x log p_t(y | x)`` from a noise-conditional classifier (Song et al., 2021, eq. 12 onward).

    Args:
        classifier: a model ``classifier(x, timestep)`` returning logits (``.logits``, a tuple, or a tensor) with an
            optional ``time_input`` attribute (``"sigma"``, ``"index"`` or ``"t"``; ``"auto"`` if absent).
        labels (`torch.Tensor`): target classes, shape ``(batch,)``.
        scale (`float`): guidance scale (1 is Bayes' rule; larger sharpens the class).
    """

    def __init__(self, classifier: torch.nn.Module, labels: torch.Tensor, scale: float) -> None:
        self.classifier, self.labels, self.scale = classifier, labels, scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, view: SchedulerSDE) -> torch.Tensor:
        timestep = model_time(view.sde, t, getattr(self.classifier, "time_input", "auto"))
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = self.classifier(x_in, timestep.to(x.dtype))
            logits = getattr(out, "logits", out[0] if isinstance(out, (tuple, list)) else out)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs.gather(1, self.labels.long()[:, None]).sum()
            (grad,) = torch.autograd.grad(selected, x_in)
        return self.scale * grad.to(x.dtype)


@dataclass
class Conditioning:
    """What a pipeline hands to the sampling loop.

    Args:
        class_labels (`torch.Tensor`, *optional*): labels for a label-conditional UNet, shape ``(batch,)``.
        score_terms (`list[ScoreTerm]`): added to the model's score at every evaluation (needs an SDE behind the
            scheduler).
        after_model (`Callable`, *optional*): ``after_model(model_output) -> model_output`` applied to every network
            output (in the scheduler's parameterisation, score terms included) before the step.
        after_step (`Callable`, *optional*): ``after_step(sample, index, generator) -> sample`` applied to every
            new sample (``index`` is the position in ``scheduler.timesteps`` of the step just taken).
        initial_sample (`Callable`, *optional*): ``initial_sample(shape, generator) -> sample`` draws the start
            in place of the Gaussian prior when no ``latents`` are given (e.g. Soft Diffusion's most corrupted
            level).
    """

    class_labels: torch.Tensor | None = None
    score_terms: list[ScoreTerm] | None = None
    after_model: Callable[[torch.Tensor], torch.Tensor] | None = None
    after_step: Callable[[torch.Tensor, int, Any], torch.Tensor] | None = None
    initial_sample: Callable[[tuple[int, ...], Any], torch.Tensor] | None = None
