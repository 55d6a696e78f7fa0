"""The probability-flow ODE: fixed-step Euler/Heun steps and a batched adaptive Runge–Kutta solver.

Two views of the same ODE are used here.

* **In ``t``** (for the adaptive solver, the likelihood and encoding): ``dx/dt = f(x, t) - g(t)^2 score / 2``,
  exactly the drift of ``sde.reverse(score_fn, probability_flow=True)``.
* **In ``sigma``** (for the fixed-step steps): write ``x_t = m(t) x_0 + s(t) eps`` and let ``x_hat = x / m``,
  ``sigma = s / m``. Then ``x_hat`` has the marginals of ``x_0 + sigma * eps`` and the probability-flow ODE of
  *every* linear SDE (VE, VP, sub-VP) becomes ``d x_hat / d sigma = -s * score(x, t)`` (the noise prediction).
  Its right-hand side is constant when the data is a single point, so an Euler step in ``sigma`` is exact there;
  it is DDIM for VP and the EDM Euler step for VE (Karras et al., 2022), and far more accurate than an Euler step
  in ``t`` at the same number of network evaluations. A final step to ``sigma = 0`` is Tweedie's denoiser.

The adaptive solver (:func:`odeint`) integrates a *batch of independent ODEs*: every sample has its own time,
step size and error norm (``step_control="per_sample"``), so one hard sample neither slows down nor loosens the
accuracy of the others. It runs entirely on the tensors' device. Step acceptance and step-size updates are
``torch.where`` masks, never Python branches on device values, and on CUDA the "all samples finished" flag is
copied to pinned host memory asynchronously and read one evaluation later, so the GPU queue is never drained by
a per-step ``.item()``. The price is exactly one extra (discarded) evaluation at the end of a CUDA solve,
counted in ``nfe``. On the CPU the flag is read at once (a CPU read costs nothing) and nothing is discarded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from ..parameterization import score_to_x0
from ..sde import SDE, VESDE, ScoreFn, broadcast_to

__all__ = [
    "ODESolution",
    "SamplerOutput",
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "ODE_METHODS",
    "odeint",
    "probability_flow_fn",
    "solve_probability_flow",
    "sample_probability_flow",
    "sigma_and_scale",
    "t_from_sigma",
    "probability_flow_times",
    "ode_derivative",
    "ode_euler_step",
    "ode_heun_step",
    "sample_probability_flow_fixed",
]

ODEFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------
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


@dataclass
class SamplerOutput(BaseOutput):
    """Result of a sampler or of an encode/decode through the ODE.

    Args:
        sample (`torch.Tensor`): the final samples.
        nfe (`int`): number of batched network evaluations used.
        nfe_per_sample (`torch.Tensor` of shape `(batch,)`, optional): evaluations each sample needed on its own.
    """

    sample: torch.Tensor
    nfe: int
    nfe_per_sample: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------
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
def _check_tolerance(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_method(method: object) -> str:
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


def _check_sample(name: str, x: object) -> torch.Tensor:
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


def _rms(v: torch.Tensor) -> torch.Tensor:
    """Root mean square of each sample, shape ``(batch,)``."""
    return v.reshape(v.shape[0], -1).pow(2).mean(dim=1).sqrt()


# ---------------------------------------------------------------------------------------------------------
# Reading the termination flag without draining the GPU queue
# ---------------------------------------------------------------------------------------------------------
class _FlagReader:
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


def _raise_on(flags: list[int], what: str) -> None:
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
    y0 = _check_sample("y0", y0)
    method = _check_method(method)
    rtol = _check_tolerance("rtol", rtol)
    atol = _check_tolerance("atol", atol)
    if step_control not in ("per_sample", "batch"):
        raise ValueError(f"step_control must be 'per_sample' or 'batch', got {step_control!r}")
    for name, value in (("t0", t0), ("t1", t1)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got {t0} for both")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if first_step is not None:
        _check_tolerance("first_step", first_step)

    if method.startswith("torchdiffeq:"):
        return _odeint_torchdiffeq(func, y0, float(t0), float(t1), method.split(":", 1)[1], rtol, atol)
    if method in FIXED_METHODS:
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(
                f"method {method!r} is fixed-step: num_steps must be a positive integer, got {num_steps!r}"
            )
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
        r = _rms(v)
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

    flags = _FlagReader(device)
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
            if i == 1 and flags.lagged:
                ready = flags.read()  # the previous step's flags; the device is busy with this evaluation
                if ready is not None:
                    _raise_on(ready, "odeint")
                    if ready[0]:
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
        if not flags.lagged:
            ready = flags.read()
            _raise_on(ready, "odeint")
            if ready[0]:
                finished = True
                break
    if not finished:
        ready = flags.read()
        if ready is None or not ready[0]:
            if ready is not None:
                _raise_on(ready, "odeint")
            raise RuntimeError(
                f"odeint: not finished after max_steps={max_steps} steps; loosen rtol/atol or raise max_steps"
            )
    return ODESolution(y=y, nfe=nfe, nfe_per_sample=nfe_per, num_steps=n_acc, num_rejected=n_rej)


# ---------------------------------------------------------------------------------------------------------
# The probability-flow ODE in t
# ---------------------------------------------------------------------------------------------------------
def _checked_score(score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    score = score_fn(x, t)
    if not isinstance(score, torch.Tensor) or score.shape != x.shape:
        got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(f"the score model returned {got} for an input of shape {tuple(x.shape)}; they must match")
    return score


def probability_flow_fn(sde: SDE, score_fn: ScoreFn) -> ODEFunc:
    """``func(t, x) = dx/dt`` of the probability-flow ODE, for :func:`odeint`."""
    rsde = sde.reverse(lambda x, t: _checked_score(score_fn, x, t), probability_flow=True)

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return rsde.sde(x, t)[0]

    return func


def _check_time_span(sde: SDE, eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps!r}")
    return float(eps)


@torch.no_grad()
def solve_probability_flow(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    t_start: float,
    t_end: float,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_control: str = "per_sample",
    num_steps: int | None = None,
) -> SamplerOutput:
    """Carry ``x`` from time ``t_start`` to ``t_end`` along the probability-flow ODE.

    ``t_start < t_end`` encodes (data towards the prior), ``t_start > t_end`` decodes. See :func:`odeint`
    for ``method``, the tolerances, ``step_control`` and ``num_steps``.

    Returns:
        :class:`SamplerOutput` with the state at ``t_end`` and the number of score evaluations.
    """
    _check_sample("x", x)
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= sde.T:
            raise ValueError(f"{name} must lie in [0, {sde.T}], got {value!r}")
    sol = odeint(
        probability_flow_fn(sde, score_fn),
        x,
        t_start,
        t_end,
        method=method,
        rtol=rtol,
        atol=atol,
        step_control=step_control,
        num_steps=num_steps,
    )
    return SamplerOutput(sample=sol.y, nfe=sol.nfe, nfe_per_sample=sol.nfe_per_sample)


def _prior_or_given(sde: SDE, x: torch.Tensor | None, shape, generator, device, dtype) -> torch.Tensor:
    if x is not None:
        return _check_sample("x", x)
    if shape is None:
        raise ValueError("pass either the prior sample x or its shape")
    return sde.prior_sampling(tuple(shape), generator=generator, device=device, dtype=dtype)


@torch.no_grad()
def sample_probability_flow(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    eps: float = 1e-3,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    denoise: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SamplerOutput:
    """Draw samples by solving the probability-flow ODE from ``T`` to ``eps`` with an adaptive solver.

    Args:
        score_fn (`Callable`): ``score_fn(x, t)``.
        sde (`SDE`): the forward process.
        x (`torch.Tensor`, optional): a prior sample to start from; drawn from ``sde.prior_sampling`` otherwise.
        shape (`tuple`, optional): shape of the prior draw when ``x`` is not given.
        eps (`float`, defaults to 1e-3): end time (the reference sampler's default).
        method, rtol, atol: see :func:`odeint`.
        denoise (`bool`, defaults to `False`): finish with Tweedie's denoiser ``E[x_0 | x_eps]`` (one more
            evaluation).
        generator (`torch.Generator`, optional): for the prior draw.
        device, dtype: of the prior draw.

    Returns:
        :class:`SamplerOutput`.
    """
    eps = _check_time_span(sde, eps)
    x = _prior_or_given(sde, x, shape, generator, device, dtype)
    out = solve_probability_flow(score_fn, sde, x, sde.T, eps, method=method, rtol=rtol, atol=atol)
    if not denoise:
        return out
    t = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
    sample = score_to_x0(sde, _checked_score(score_fn, out.sample, t), out.sample, t)
    return SamplerOutput(sample=sample, nfe=out.nfe + 1, nfe_per_sample=out.nfe_per_sample + 1)


# ---------------------------------------------------------------------------------------------------------
# The probability-flow ODE in sigma: grids and fixed-step steps
# ---------------------------------------------------------------------------------------------------------
def sigma_and_scale(sde: SDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, m) = (s(t) / m(t), m(t))``: the noise level of ``x / m`` and the scale ``m``."""
    mean_coeff, std = sde.marginal_coeffs(t)
    return std / mean_coeff, mean_coeff


def t_from_sigma(sde: SDE, sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of ``sigma(t) = s(t) / m(t)`` on ``[0, T]`` (exact for VE, bisection to float64 precision else)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if isinstance(sde, VESDE):
        return sde.sigma_to_t(sigma)
    lo = torch.zeros_like(sigma)
    hi = torch.full_like(sigma, sde.T)
    for _ in range(64):  # sigma(t) is increasing; 64 halvings reach float64 resolution
        mid = 0.5 * (lo + hi)
        below = sigma_and_scale(sde, mid)[0] < sigma
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def probability_flow_times(
    sde: SDE, num_steps: int, *, spacing: str = "uniform", eps: float = 1e-3, rho: float = 7.0
) -> torch.Tensor:
    """Decreasing evaluation times ``t_0 = T > ... > t_{n-1} = eps`` (float64, shape ``(num_steps,)``).

    Args:
        sde (`SDE`): the forward process.
        num_steps (`int`): number of times ``n`` (>= 1; with 1 only ``T`` is returned).
        spacing (`str`, defaults to `"uniform"`): `"uniform"` in ``t``, or `"karras"`: uniform in
            ``sigma^(1 / rho)`` between ``sigma(T)`` and ``sigma(eps)`` with ``sigma = s / m`` (Karras et al., 2022).
        eps (`float`, defaults to 1e-3): the last time.
        rho (`float`, defaults to 7.0): exponent of the Karras spacing.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    eps = _check_time_span(sde, eps)
    if spacing == "uniform":
        return torch.linspace(sde.T, eps, num_steps, dtype=torch.float64)
    if spacing != "karras":
        raise ValueError(f"spacing must be 'uniform' or 'karras', got {spacing!r}")
    _check_tolerance("rho", rho)
    ends = sigma_and_scale(sde, torch.tensor([sde.T, eps], dtype=torch.float64))[0]
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    hi, lo = ends[0] ** (1 / rho), ends[1] ** (1 / rho)
    t = t_from_sigma(sde, (hi + ramp * (lo - hi)) ** rho)
    t[0], t[-1] = sde.T, eps  # exact end points (the inverse is exact only to rounding)
    return t


def ode_derivative(sde: SDE, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """``d(x / m) / d sigma = -s(t) * score``: the probability-flow ODE in the ``sigma`` variable.

    Args:
        sde (`SDE`): the forward process.
        x (`torch.Tensor`): the current sample (unused beyond its shape; kept for a uniform signature).
        t (`torch.Tensor` of shape `(batch,)`): its time.
        score (`torch.Tensor`): the score at ``(x, t)``.
    """
    _, std = sde.marginal_coeffs(t)
    return -broadcast_to(std, x) * score


def ode_euler_step(
    x: torch.Tensor,
    derivative: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    scale: torch.Tensor,
    scale_next: torch.Tensor,
) -> torch.Tensor:
    """One Euler step of ``d(x / m) / d sigma = derivative`` from ``sigma`` to ``sigma_next``.

    All coefficients have shape ``(batch,)``; ``scale`` is ``m``. With ``sigma_next = 0`` (and
    ``scale_next = 1``) the step returns Tweedie's denoised estimate.
    """
    x_hat = x / broadcast_to(scale, x) + broadcast_to(sigma_next - sigma, x) * derivative
    return broadcast_to(scale_next, x) * x_hat


def ode_heun_step(
    x: torch.Tensor,
    derivative: torch.Tensor,
    derivative_next: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    scale: torch.Tensor,
    scale_next: torch.Tensor,
) -> torch.Tensor:
    """Heun's (trapezoidal) correction: ``derivative_next`` is evaluated at the Euler prediction."""
    return ode_euler_step(x, 0.5 * (derivative + derivative_next), sigma, sigma_next, scale, scale_next)


@torch.no_grad()
def sample_probability_flow_fixed(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor | None = None,
    *,
    num_steps: int = 50,
    solver: str = "heun",
    spacing: str = "uniform",
    eps: float = 1e-3,
    rho: float = 7.0,
    denoise: bool = True,
    shape: tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SamplerOutput:
    """Fixed-step Euler or Heun sampling of the probability-flow ODE in the ``sigma`` variable.

    The model is evaluated at the ``num_steps`` times of :func:`probability_flow_times`. Steps go between
    consecutive times and, with ``denoise=True``, a last Euler step from ``eps`` to ``sigma = 0`` (Tweedie's
    denoiser), exactly as Diffusers' Euler/Heun schedulers end. Cost: ``num_steps`` evaluations (Euler) or
    ``2 num_steps - 1`` (Heun) with ``denoise``; ``num_steps - 1`` or ``2 (num_steps - 1)`` without.

    Returns:
        :class:`SamplerOutput`.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    times = probability_flow_times(sde, num_steps, spacing=spacing, eps=eps, rho=rho)
    x = _prior_or_given(sde, x, shape, generator, device, dtype)
    b = x.shape[0]

    def coeffs(t_value: torch.Tensor):
        t = t_value.to(device=x.device, dtype=x.dtype).expand(b)
        sigma, scale = sigma_and_scale(sde, t)
        return t, sigma, scale

    nfe = 0
    t, sigma, scale = coeffs(times[0])
    for i in range(1, num_steps):
        d = ode_derivative(sde, x, t, _checked_score(score_fn, x, t))
        t_next, sigma_next, scale_next = coeffs(times[i])
        x_next = ode_euler_step(x, d, sigma, sigma_next, scale, scale_next)
        if solver == "heun":
            d_next = ode_derivative(sde, x_next, t_next, _checked_score(score_fn, x_next, t_next))
            x_next = ode_heun_step(x, d, d_next, sigma, sigma_next, scale, scale_next)
        nfe += 2 if solver == "heun" else 1
        x, t, sigma, scale = x_next, t_next, sigma_next, scale_next
    if denoise:
        d = ode_derivative(sde, x, t, _checked_score(score_fn, x, t))
        x = ode_euler_step(x, d, sigma, torch.zeros_like(sigma), scale, torch.ones_like(scale))
        nfe += 1
    return SamplerOutput(sample=x, nfe=nfe, nfe_per_sample=torch.full((b,), nfe, dtype=torch.long, device=x.device))
