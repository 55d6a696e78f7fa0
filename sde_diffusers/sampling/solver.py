"""A batched adaptive Runge–Kutta solver for many independent ODEs at once (no score, no SDE: any ``dy/dt``).

:func:`odeint` integrates a *batch of independent ODEs*: every sample has its own time, step size and error norm
(``step_control="per_sample"``), so one hard sample neither slows down nor loosens the accuracy of the others. It
runs entirely on the tensors' device. Step acceptance and step-size updates are ``torch.where`` masks, never Python
branches on device values, and on CUDA the "all samples finished" flag is copied to pinned host memory
asynchronously and read one evaluation later (:class:`FlagReader`), so the GPU queue is never drained by a per-step
``.item()``. The price is exactly one extra (discarded) evaluation at the end of a CUDA solve, counted in ``nfe``.
On the CPU the flag is read at once (a CPU read costs nothing) and nothing is discarded.

The probability-flow ODE, the likelihood and the adaptive reverse-SDE sampler are built on it
(:mod:`sde_diffusers.sampling.ode`, :mod:`sde_diffusers.likelihood`, :mod:`sde_diffusers.sampling.adaptive_sde`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from ..sde import broadcast_to
from ..validation import check_choice, check_int, check_number, check_positive

__all__ = [
    "ODESolution",
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "ODE_METHODS",
    "odeint",
    "FlagReader",
    "raise_on_flags",
    "check_method",
    "check_sample",
    "rms",
]

ODEFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ODESolution(BaseOutput):
    """Result of :func:`odeint`.

    Args:
        y (`torch.Tensor`): the state at ``t1``, shape of ``y0``.
        nfe (`int`): number of (batched) evaluations of ``func``, the cost of the solve.
        nfe_per_sample (`torch.Tensor` of shape `(batch,)`): evaluations made while each sample was still
            integrating (what a solve of that sample alone would have cost).
        num_steps (`torch.Tensor` of shape `(batch,)`): accepted steps per sample.
        num_rejected (`torch.Tensor` of shape `(batch,)`): rejected steps per sample.
    """

    y: torch.Tensor
    nfe: int
    nfe_per_sample: torch.Tensor
    num_steps: torch.Tensor
    num_rejected: torch.Tensor


# Butcher tableaux (embedded pairs are FSAL: the last stage is evaluated at the new state)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tableau:
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...] | None  # b - b_hat (error weights), None for fixed-step methods
    error_order: int  # order of the embedded estimate: the step-size exponent is -1 / (error_order + 1)


_DOPRI5 = _Tableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    e=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40),
    error_order=4,
)
_BOSH3 = _Tableau(
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    e=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    error_order=2,
)
_EULER = _Tableau(c=(0.0,), a=((),), b=(1.0,), e=None, error_order=1)
_HEUN = _Tableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), e=None, error_order=2)
_RK4 = _Tableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    e=None,
    error_order=4,
)

ADAPTIVE_METHODS = {"dopri5": _DOPRI5, "rk45": _DOPRI5, "bosh3": _BOSH3, "rk23": _BOSH3}
FIXED_METHODS = {"euler": _EULER, "heun": _HEUN, "rk4": _RK4}
#: Every accepted ``method``; any ``"torchdiffeq:<name>"`` is accepted as well.
ODE_METHODS = tuple(ADAPTIVE_METHODS) + tuple(FIXED_METHODS)

_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


# ---------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------
def check_method(method: object) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method.startswith("torchdiffeq:"):
        import torchdiffeq  # noqa: F401  (fail early with an ImportError naming the package)

        name = method.split(":", 1)[1]
        from torchdiffeq._impl.odeint import SOLVERS

        if name not in SOLVERS:
            raise ValueError(f"unknown torchdiffeq method {name!r}; torchdiffeq offers {sorted(SOLVERS)}")
        return method
    if method not in ADAPTIVE_METHODS and method not in FIXED_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS} or 'torchdiffeq:<name>', got {method!r}")
    return method


def check_sample(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (batch, ...) with batch >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _time_dtype(device: torch.device) -> torch.dtype:
    # Times accumulate over hundreds of steps: keep them in float64 where the device has it.
    return torch.float32 if device.type == "mps" else torch.float64


def rms(v: torch.Tensor) -> torch.Tensor:
    """Root mean square of each sample, shape ``(batch,)``."""
    return v.reshape(v.shape[0], -1).pow(2).mean(dim=1).sqrt()


# ---------------------------------------------------------------------------------------------------------
# Reading the termination flag without draining the GPU queue
# ---------------------------------------------------------------------------------------------------------
class FlagReader:
    """Host view of three device flags: all finished, a non-finite state, a step size that underflowed.

    On CUDA the flags of step ``k`` are copied to pinned memory with ``non_blocking=True`` and read while the
    first evaluation of step ``k + 1`` is already queued, so the device always has work. Elsewhere they are
    read immediately (``lagged=True`` forces the one-step lag on any device, for tests).
    """

    def __init__(self, device: torch.device, lagged: bool | None = None) -> None:
        self.lagged = device.type == "cuda" if lagged is None else lagged
        self._pinned = device.type == "cuda"
        self._host = torch.zeros(3, dtype=torch.int32, pin_memory=self._pinned)
        self._pending: torch.Tensor | None = None
        self._event = None

    def post(self, done: torch.Tensor, bad: torch.Tensor, failed: torch.Tensor) -> None:
        self._pending = torch.stack([done, bad, failed]).to(torch.int32)
        if self._pinned:
            self._host.copy_(self._pending, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def read(self) -> list[int] | None:
        if self._pending is None:
            return None
        if self._pinned:
            self._event.synchronize()
            flags = self._host.tolist()
        else:
            flags = self._pending.tolist()
        self._pending = None
        return flags

    def finished(self, what: str) -> bool:
        """Read the pending flags, if any: raise on a failure; True when every sample has finished."""
        ready = self.read()
        if ready is None:
            return False
        raise_on_flags(ready, what)
        return bool(ready[0])

    def require_finished(self, what: str, advice: str) -> None:
        """After the last allowed step: the flags still pending must say finished."""
        if not self.finished(what):
            raise RuntimeError(f"{what}: not finished after {advice}")


def raise_on_flags(flags: list[int], what: str) -> None:
    if flags[1]:
        raise FloatingPointError(f"{what}: the state became NaN or infinite (check the model and the data)")
    if flags[2]:
        raise RuntimeError(f"{what}: the step size underflowed; the ODE is too stiff for rtol/atol")


# ---------------------------------------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------------------------------------
def odeint(
    func: ODEFunc,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_control: str = "per_sample",
    num_steps: int | None = None,
    first_step: float | None = None,
    max_steps: int = 100_000,
) -> ODESolution:
    """Integrate a batch of independent ODEs ``dy/dt = func(t, y)`` from ``t0`` to ``t1``.

    Args:
        func (`Callable`): ``func(t, y) -> dy/dt`` with ``t`` of shape ``(batch,)`` (each sample's own time,
            in the dtype of ``y``) and ``y`` of the shape of ``y0``. Samples must not interact.
        y0 (`torch.Tensor` of shape `(batch, ...)`): initial states.
        t0, t1 (`float`): start and end time (``t1 < t0`` integrates backwards).
        method (`str`, defaults to `"dopri5"`): adaptive `"dopri5"` (alias `"rk45"`, Dormand–Prince 5(4), as
            ``scipy.integrate.solve_ivp(method="RK45")``) or `"bosh3"` (alias `"rk23"`, Bogacki–Shampine 3(2));
            fixed-step `"euler"`, `"heun"` or `"rk4"` on ``num_steps`` uniform steps; or
            `"torchdiffeq:<name>"` to delegate to ``torchdiffeq.odeint`` (batch-coupled, syncs every step).
        rtol, atol (`float`, default 1e-5): relative and absolute tolerances; an accepted step has
            ``rms(err / (atol + rtol * max(|y|, |y_new|))) < 1``.
        step_control (`str`, defaults to `"per_sample"`): `"per_sample"` gives every sample its own step size
            and error norm; `"batch"` shares one step size and takes the norm over the whole batch, as
            ``solve_ivp`` on the flattened batch does.
        num_steps (`int`, optional): number of steps of a fixed-step method (required there).
        first_step (`float`, optional): initial step size; chosen by Hairer's rule (one evaluation) if omitted.
        max_steps (`int`, defaults to 100000): attempted steps after which the solve fails.

    Returns:
        :class:`ODESolution`.
    """
    y0 = check_sample("y0", y0)
    method = check_method(method)
    rtol = check_positive("rtol", rtol)
    atol = check_positive("atol", atol)
    check_choice("step_control", step_control, ("per_sample", "batch"))
    t0, t1 = check_number("t0", t0), check_number("t1", t1)
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got {t0} for both")
    check_int("max_steps", max_steps)
    if first_step is not None:
        check_positive("first_step", first_step)

    if method.startswith("torchdiffeq:"):
        return _odeint_torchdiffeq(func, y0, float(t0), float(t1), method.split(":", 1)[1], rtol, atol)
    if method in FIXED_METHODS:
        if num_steps is None:
            raise ValueError(f"method {method!r} is fixed-step: pass num_steps (a positive integer)")
        check_int("num_steps", num_steps)
        return _odeint_fixed(func, y0, float(t0), float(t1), FIXED_METHODS[method], num_steps)
    if num_steps is not None:
        raise ValueError(f"num_steps is only for the fixed-step methods {tuple(FIXED_METHODS)}, not {method!r}")
    return _odeint_adaptive(
        func,
        y0,
        float(t0),
        float(t1),
        ADAPTIVE_METHODS[method],
        rtol,
        atol,
        step_control == "batch",
        first_step,
        max_steps,
    )


def _combine(y: torch.Tensor, h: torch.Tensor, weights: tuple[float, ...], ks: list[torch.Tensor]) -> torch.Tensor:
    """``y + h * sum_j w_j k_j`` (``h`` of shape ``(batch,)`` broadcast over the state)."""
    acc = None
    for w, k in zip(weights, ks, strict=True):
        if w != 0.0:
            acc = k * w if acc is None else acc.add(k, alpha=w)
    if acc is None:
        return y
    return y + broadcast_to(h, y) * acc


def _odeint_fixed(func, y0, t0, t1, tab: _Tableau, num_steps: int) -> ODESolution:
    b = y0.shape[0]
    tdt = _time_dtype(y0.device)
    grid = torch.linspace(t0, t1, num_steps + 1, dtype=tdt, device=y0.device)
    y = y0
    nfe = 0
    for i in range(num_steps):
        t, h = grid[i].expand(b), (grid[i + 1] - grid[i]).expand(b)
        hy = h.to(y.dtype)
        ks: list[torch.Tensor] = []
        for c, a in zip(tab.c, tab.a, strict=True):
            ks.append(func((t + c * h).to(y.dtype), _combine(y, hy, a, ks)))
            nfe += 1
        y = _combine(y, hy, tab.b, ks)
    if not torch.isfinite(y).all():
        raise FloatingPointError("odeint: the state became NaN or infinite (check the model and the data)")
    per = torch.full((b,), nfe, dtype=torch.long, device=y.device)
    steps = torch.full((b,), num_steps, dtype=torch.long, device=y.device)
    return ODESolution(y=y, nfe=nfe, nfe_per_sample=per, num_steps=steps, num_rejected=torch.zeros_like(steps))


def _odeint_torchdiffeq(func, y0, t0, t1, name, rtol, atol) -> ODESolution:
    import torchdiffeq

    b = y0.shape[0]
    count = [0]

    def wrapped(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return func(t.to(y.dtype).expand(b), y)

    times = torch.tensor([t0, t1], dtype=_time_dtype(y0.device), device=y0.device)
    y = torchdiffeq.odeint(wrapped, y0, times, rtol=rtol, atol=atol, method=name)[-1]
    per = torch.full((b,), count[0], dtype=torch.long, device=y.device)
    zeros = torch.zeros_like(per)
    return ODESolution(y=y, nfe=count[0], nfe_per_sample=per, num_steps=zeros, num_rejected=zeros.clone())


def _odeint_adaptive(func, y0, t0, t1, tab: _Tableau, rtol, atol, batch, first_step, max_steps) -> ODESolution:
    device, b = y0.device, y0.shape[0]
    tdt = _time_dtype(device)
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    exponent = -1.0 / (tab.error_order + 1)
    # Smallest step that still moves t: ~ 10 ulp of the time scale (scipy uses the same guard).
    min_step = 10 * (math.ulp(max(abs(t0), abs(t1))) if tdt == torch.float64 else 1e-6 * max(abs(t0), abs(t1), 1.0))

    def norm(v: torch.Tensor) -> torch.Tensor:
        r = rms(v)
        return r.pow(2).mean().sqrt().expand(b) if batch else r

    t = torch.full((b,), t0, dtype=tdt, device=device)
    t_end = torch.full((b,), t1, dtype=tdt, device=device)
    y = y0
    nfe = 0
    nfe_per = torch.zeros(b, dtype=torch.long, device=device)
    n_acc = torch.zeros(b, dtype=torch.long, device=device)
    n_rej = torch.zeros(b, dtype=torch.long, device=device)

    k1 = func(t.to(y.dtype), y)
    nfe += 1
    nfe_per += 1
    if first_step is None:
        # Hairer, Norsett & Wanner (1993), II.4: one extra evaluation, vectorised over the batch.
        scale = atol + y.abs() * rtol
        d0, d1 = norm(y / scale), norm(k1 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-30))
        h0 = h0.to(tdt).clamp(max=span)
        f1 = func((t + direction * h0).to(y.dtype), y + broadcast_to((direction * h0).to(y.dtype), y) * k1)
        nfe += 1
        nfe_per += 1
        d2 = norm((f1 - k1) / scale) / h0.to(y.dtype)
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(
            dmax <= 1e-15,
            torch.clamp(h0 * 1e-3, min=1e-6),
            (0.01 / dmax.clamp_min(1e-30)).to(tdt) ** (1.0 / (tab.error_order + 1)),
        )
        h = torch.minimum(torch.minimum(100 * h0, h1.to(tdt)), torch.full_like(h0, span))
    else:
        h = torch.full((b,), min(first_step, span), dtype=tdt, device=device)
    rejected_before = torch.zeros(b, dtype=torch.bool, device=device)

    flags = FlagReader(device)
    finished = False
    n_stages = len(tab.c)
    for _ in range(max_steps):
        remaining = (t_end - t) * direction
        active = remaining > 0
        h_eff = torch.minimum(h, remaining).clamp_min(0.0)
        last = h_eff >= remaining
        hs = direction * h_eff
        hy = hs.to(y.dtype)
        ks = [k1]
        for i in range(1, n_stages):
            ks.append(func((t + tab.c[i] * hs).to(y.dtype), _combine(y, hy, tab.a[i], ks)))
            nfe += 1
            nfe_per += active
            # the previous step's flags, read while the device is busy with this evaluation
            if i == 1 and flags.lagged and flags.finished("odeint"):
                finished = True
                break
        if finished:
            break
        # FSAL: the last stage was evaluated at the 5th/3rd-order solution.
        y_new = _combine(y, hy, tab.a[-1], ks[:-1])
        err = _combine(torch.zeros_like(y), hy, tab.e, ks)
        scale = atol + torch.maximum(y.abs(), y_new.abs()) * rtol
        ratio = norm(err / scale)
        accept = (ratio < 1) & active
        reject = (~(ratio < 1)) & active

        y = torch.where(broadcast_to(accept, y), y_new, y)
        t = torch.where(accept, torch.where(last, t_end, t + hs), t)
        k1 = torch.where(broadcast_to(accept, y), ks[-1], k1)
        ratio64 = ratio.to(tdt)
        factor = torch.where(
            ratio64 == 0,
            torch.full_like(ratio64, _MAX_FACTOR),
            _SAFETY * ratio64.clamp_min(1e-30) ** exponent,
        )
        grow = torch.where(rejected_before, factor.clamp(max=1.0), factor.clamp(max=_MAX_FACTOR))
        shrink = factor.clamp(min=_MIN_FACTOR, max=1.0)
        h = torch.where(accept, h_eff * grow, torch.where(reject, h_eff * shrink, h))
        rejected_before = torch.where(active, reject, rejected_before)
        n_acc += accept
        n_rej += reject

        still = (t_end - t) * direction > 0
        bad = ~torch.isfinite(ratio).all()
        failed = (still & (h < min_step)).any()
        flags.post(~still.any(), bad, failed)
        if not flags.lagged and flags.finished("odeint"):
            finished = True
            break
    if not finished:
        flags.require_finished("odeint", f"max_steps={max_steps} steps; loosen rtol/atol or raise max_steps")
    return ODESolution(y=y, nfe=nfe, nfe_per_sample=nfe_per, num_steps=n_acc, num_rejected=n_rej)
