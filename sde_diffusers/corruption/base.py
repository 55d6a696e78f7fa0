"""The corruption strategy: ``x_t = C_t x_0 + s_t z`` with a linear operator ``C_t`` and Gaussian noise ``z``.

Both corruptions of this package are of this form:

* the Gaussian SDEs (:class:`~sde_diffusers.corruption.GaussianCorruption`): ``C_t = m(t) I`` and ``s_t = std(t)``
  of the SDE's perturbation kernel;
* Soft Diffusion's blur + noise (:class:`~sde_diffusers.corruption.CorruptionSchedule`): ``C_t`` a DCT Gaussian
  blur and ``s_t`` a small noise level.

For every such corruption the score of the corrupted data is ``grad log p_t(x_t) = (C_t E[x_0 | x_t] - x_t) / s_t^2``,
and the losses of :mod:`sde_diffusers.losses` only ask the strategy for ``C_t``, ``s_t``, the corruption itself and
the distribution of training times. A new corruption is one subclass of :class:`LinearCorruption` in one new file.
"""

from __future__ import annotations

import abc

import torch

from ..sde import broadcast_to

__all__ = ["LinearCorruption", "as_corruption", "check_batch", "check_noise"]


def check_batch(x: object, name: str = "x") -> torch.Tensor:
    """Validate a non-empty floating-point batch ``(batch, ...)`` with at least one data dimension."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (batch, ...) with at least one data dimension, got {tuple(x.shape)}")
    return x


def check_noise(noise: object, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``noise`` as a tensor like ``x0`` (device and dtype), or standard-normal noise drawn with ``generator``."""
    if noise is None:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of the data {tuple(x0.shape)}, got {tuple(noise.shape)}")
    return noise.to(device=x0.device, dtype=x0.dtype)


class LinearCorruption(abc.ABC):
    """A corruption ``x_t = C_t x_0 + s_t z`` for times ``t`` in ``[t_min, T]`` (the strategy the losses take).

    Subclasses implement the unchecked primitives :meth:`_degrade` and :meth:`_noise_std` (the losses call them
    after validating their inputs once) and may refine :meth:`check_images`, :meth:`check_time`, :attr:`t_min`
    and :attr:`T`. The public :meth:`degrade`, :meth:`noise_std` and :meth:`corrupt` validate their arguments.
    """

    #: Smallest training time (``U(t_min, T)`` in :meth:`sample_time`).
    t_min: float = 0.0
    #: Largest time.
    T: float = 1.0

    # ---- what a subclass provides -------------------------------------------------------------------
    @abc.abstractmethod
    def _degrade(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``C_t x`` for validated ``x`` ``(batch, ...)`` and ``t`` ``(batch,)`` on ``x``'s device."""

    @abc.abstractmethod
    def _noise_std(self, t: torch.Tensor) -> torch.Tensor:
        """``s_t`` of shape ``(batch,)``, dtype and device of ``t`` (validated)."""

    def _corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``C_t x_0 + s_t noise`` for validated inputs."""
        return self._degrade(x0, t) + broadcast_to(self._noise_std(t).to(x0.dtype), x0) * noise

    # ---- validation (once, at the public boundary) ----------------------------------------------------
    def check_images(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate a floating-point batch ``(batch, ...)`` with at least one data dimension and return it."""
        return check_batch(x, name)

    def check_time(self, t: object, x: torch.Tensor | None = None) -> torch.Tensor:
        """Validate times ``t`` (floating tensor ``(batch,)`` in ``[0, T]``, matching ``x``) and return them."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a torch.Tensor of shape (batch,), got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"t must have shape (batch,), got {tuple(t.shape)}")
        if x is not None and t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t must have shape ({x.shape[0]},) to match x of shape {tuple(x.shape)}, got {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()) or bool(((t < 0) | (t > self.T)).any()):
            raise ValueError(f"t must lie in [0, {self.T:g}], got values from {t.min().item()} to {t.max().item()}")
        return t

    # ---- the strategy ---------------------------------------------------------------------------------
    def degrade(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``C_t x``: the linear part of the corruption, applied to each ``x[i]`` at time ``t[i]``.

        Args:
            x (`torch.Tensor` of shape `(batch, ...)`): data (or a difference of data, ``C_t`` being linear).
            t (`torch.Tensor` of shape `(batch,)`): times.

        Returns:
            `torch.Tensor` like ``x``.
        """
        self.check_images(x)
        return self._degrade(x, self.check_time(t, x).to(x.device))

    def noise_std(self, t: torch.Tensor) -> torch.Tensor:
        """``s_t``, the standard deviation of the noise at times ``t`` (shape ``(batch,)``, like ``t``)."""
        return self._noise_std(self.check_time(t))

    def corrupt(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x_t = C_t x_0 + s_t noise``.

        Args:
            x0 (`torch.Tensor` of shape `(batch, ...)`): clean data.
            t (`torch.Tensor` of shape `(batch,)`): times.
            noise (`torch.Tensor` like ``x0``, *optional*): standard-normal noise; drawn with ``generator`` if omitted.
            generator (`torch.Generator`, *optional*): the noise source.

        Returns:
            `torch.Tensor` like ``x0``.
        """
        self.check_images(x0, "x0")
        t = self.check_time(t, x0).to(x0.device)
        return self._corrupt(x0, t, check_noise(noise, x0, generator))

    def sample_time(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Training times ``t ~ U(t_min, T)``, shape ``(batch_size,)`` (callers check ``batch_size``)."""
        u = torch.rand(batch_size, generator=generator, device=device, dtype=dtype)
        if self.t_min == 0.0 and self.T == 1.0:
            return u  # bit for bit the plain uniform draw
        return u * (self.T - self.t_min) + self.t_min


def as_corruption(corruption: object) -> LinearCorruption:
    """The :class:`LinearCorruption` of ``corruption``: itself, or the ``corruption`` attribute of a scheduler.

    Raises:
        `TypeError`: neither is a :class:`LinearCorruption`.
    """
    if isinstance(corruption, LinearCorruption):
        return corruption
    inner = getattr(corruption, "corruption", None)
    if isinstance(inner, LinearCorruption):
        return inner
    raise TypeError(
        "corruption must be a LinearCorruption (a CorruptionSchedule, a GaussianCorruption) or a scheduler "
        f"holding one (SoftDiffusionScheduler), got {type(corruption).__name__}"
    )
