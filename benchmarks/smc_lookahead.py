"""Does a lookahead twist fix ``method="smc"`` where ``p(x_0 | x_t)`` is multimodal? (issue 11)

The sampler's twist ``g_t(x) = N(y; P x0_hat(x_t), r_t^2 P)`` evaluates the likelihood at Tweedie's mean. Where
``p(x_0 | x_t)`` has several modes that mean lies between them, close to an observation that is itself between them,
so particles that have not chosen a mode are overrated (``benchmarks/smc_diagnostics.py``). The lookahead twist
evaluates a Gaussian at the end of a short deterministic probability-flow rollout instead, which lands an undecided
particle in one mode: from ``(x_t, sigma_t)`` (``sigma = s / m``), ``m`` DDIM steps (Euler in ``(x / m, sigma)``) on
a geometric grid of ``m + 1`` segments towards the chain's last noise level, each followed by one network call, and
Tweedie's mean ``e`` at the last point: ``m`` extra network calls per particle and step. The variant
(``K:m:variant`` in ``--configs``) chooses what the Gaussian is centred on and how wide it is:

* ``jacobian``: centred on ``e``, the sampler's own ``r_t^2`` at ``x_t`` (the network's Jacobian there);
* ``landing``: centred on ``e``, with the within-mode posterior variance ``r_t^2 = v sigma_t^2 / (v + sigma_t^2)``,
  ``v`` the local prior variance read from the Jacobian at the rollout's end point (the mode it lands in); it
  vanishes as ``t -> 0``;
* ``mode``: the ``landing`` variance, centred on the within-mode Tweedie mean at ``x_t`` reconstructed from ``e``
  (for a Gaussian mode of variance ``v`` the rollout maps ``x_t - mu`` to ``c (x_t - mu)`` with ``c`` known from the
  grid, so ``mu = (e - c u) / (1 - c)`` and ``x0 = mu + a_t (u - mu)``, ``u = x_t / m``, ``a_t = v / (v +
  sigma_t^2)``): exactly the sampler's twist, hence the exact ``p(y | x_t)``, on Gaussian data.

``+proposal`` also moves the proposal to the lookahead twist: its gradient (through the rollout) replaces Tweedie's
along the unobserved directions, its residual and variance feed the Kalman step on the observed ones. Without it only
the weights change. Either way the weight update ``g'(x') / g(x) * p(x' | x) / q(x' | x)`` uses the proposal
actually drawn (the sampler computes ``p / q`` from the shift it used), so any positive twist keeps SMC consistent;
at the last level the grid collapses and the twist is Tweedie's, as in the sampler.

``K:1:landing+proposal`` (the default lookahead config) is the library's option: it runs
``pipe(..., method="smc", smc_lookahead=True)`` (two network calls per particle and step, one more backward pass;
the library aims the rollout at the level before the last where the last is ``sigma = 0``, as under DDIM). Every
other variant is an experiment patch of the pipeline's ``_smc_evaluate`` (it recomputes the network at ``x_t`` and
at the end point to get their graphs, so its wall times overstate the cost; ``network_calls_per_image`` counts
``(1 + m) K`` per step).

Run: ``python benchmarks/smc_lookahead.py [--held-out] [--problems ...] [--schedulers ...] [--configs 16:0
16:1:landing+proposal ...] [--samples 256] [--seed 0]`` (``m = 0``: the sampler's own twist); by default K = 8 and
16, Tweedie against the lookahead, on six development problems (or with ``--held-out`` the eight held-out problems
of ``conditional_accuracy.py``) under VE reverse diffusion, VP Euler-Maruyama and DDIM, about 7 minutes each on one
CPU thread; writes ``benchmarks/results/smc_lookahead[_held_out].json``. The earlier exploration of the variants
(``smc_lookahead_explore.json``) used ``--configs 4:0 4:1 16:0 16:1 16:1:mode+proposal 16:2 8:1 4:3 --schedulers
"VE RD" "VP EM" --problems issue-16d tail-16d between-64d random-3 two-modes between-3d three-hues``.
``--twist-error`` instead follows the twist's error against the exact ``log p(y | x_t)`` along a run
(``smc_lookahead_twist_error.json``; ``--problems gaussian-16d`` is a single Gaussian, where the ``mode`` variant
must be exact).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import write_report  # noqa: E402
from conditional_accuracy import (  # noqa: E402
    _inpaint,
    _left_half,
    held_out_problems,
    monte_carlo_noise,
    tuning_problems,
)
from smc_diagnostics import sample  # noqa: E402

from sde_diffusers.pipelines import pipeline_score_sde_inverse as inverse  # noqa: E402
from sde_diffusers.sampling import smc  # noqa: E402
from sde_diffusers.sampling.ode import sigma_and_scale, t_from_sigma  # noqa: E402
from sde_diffusers.sampling.smc import gaussian_log_likelihood  # noqa: E402
from sde_diffusers.sde import broadcast_to  # noqa: E402


def _sigma(view, t: torch.Tensor) -> torch.Tensor:
    return sigma_and_scale(view, t)[0]


def lookahead(pipe, view, x, t, x0, t_end, steps, cond):
    """``steps`` DDIM steps from ``(x, t)`` (Tweedie's ``x0`` there) towards ``t_end``, one network call each:
    ``(x_m, t_m, x0_hat(x_m), sigmas)``, ``sigmas`` the ``steps + 1`` noise levels visited (each ``(batch,)``)."""
    sigma_t, sigma_end = _sigma(view, t), _sigma(view, t_end)
    ratio = (sigma_end / sigma_t).clamp(max=1.0)
    sigmas = [sigma_t]
    for j in range(1, steps + 1):
        sigma_next = sigma_t * ratio ** (j / (steps + 1))
        t_next = t_from_sigma(view, sigma_next, t_end, t).to(t.dtype)
        x = smc.probability_flow_step(x, x0, *view.marginal_coeffs(t), *view.marginal_coeffs(t_next))
        t = t_next
        sigmas.append(_sigma(view, t))
        out = pipe._network(x, view.model_timestep(t), cond)
        x0 = view.to_x0(view.to_score(out, x, t), x, t)
    return x, t, x0, sigmas


def patched_evaluate(steps: int, variance: str, mean: str = "endpoint", proposal: bool = False, log=None):
    """The pipeline's ``_smc_evaluate`` with the lookahead twist (``steps = 0``: unchanged); ``log`` (a list), when
    given, receives ``(sigma_t, x_t, twist, sampler's twist)`` at every evaluation."""
    original = inverse.ScoreSdeInverseProblemPipeline._smc_evaluate

    def _smc_evaluate(self, sample, timestep, view, cond, twist):
        ev = original(self, sample, timestep, view, cond, twist)
        if steps == 0:
            if log is not None:
                x = self.sampling_scheduler.scale_model_input(sample, timestep)
                t = view.continuous(timestep, x.shape[0], x)
                log.append((_sigma(view, t), x.detach(), ev["log_g"], ev["log_g"]))
            return ev
        obs = twist.observation
        x_in = self.sampling_scheduler.scale_model_input(sample, timestep)
        t = view.continuous(timestep, x_in.shape[0], x_in)
        t_end = view.continuous(self.sampling_scheduler.timesteps[-1], x_in.shape[0], x_in)
        with torch.enable_grad() if proposal else contextlib.nullcontext():
            x = x_in.detach().requires_grad_(proposal)
            out = self._network(x, timestep, cond) if proposal else ev["out"]
            x0 = view.to_x0(view.to_score(out, x, t), x, t)
            x_m, t_m, x0_m, sigmas = lookahead(self, view, x, t, x0, t_end, steps, cond)
            if variance == "jacobian":
                r2 = ev["r2"]
            else:  # "landing": v from the Jacobian at the end point, r^2 = v sigma_t^2 / (v + sigma_t^2)
                with torch.enable_grad(), inverse._math_attention():
                    xg = x_m.detach().requires_grad_(True)
                    score_g = view.to_score(self._network(xg, view.model_timestep(t_m), cond), xg, t_m)
                    x0g = view.to_x0(score_g, xg, t_m)
                    res_g = obs.project(obs.observed.to(x0g.dtype) - x0g)
                    r2_m = twist._posterior_variance(view, xg, t_m, x0g, res_g).detach()
                s2_m, s2_t = _sigma(view, t_m) ** 2, _sigma(view, t) ** 2
                # r^2 = v s2 / (v + s2)  =>  1 / v = 1 / r^2 - 1 / s2 (clamped to a finite positive v)
                inv_v = (1 / r2_m - 1 / s2_m).clamp_min(1e-6)
                r2 = s2_t / (1 + s2_t * inv_v)
                if mean == "mode":
                    # Within-mode Tweedie mean at x_t from the end point e, for a Gaussian mode of variance v: the
                    # rollout maps x_t - mu to c (x_t - mu), so mu = (e - c u) / (1 - c) and x0 = mu + a_t (u - mu),
                    # u = x_t / m.
                    v = 1 / inv_v
                    c = v / (v + sigmas[-1] ** 2)
                    for now, nxt in zip(sigmas[:-1], sigmas[1:], strict=True):
                        a = v / (v + now**2)
                        c = c * (a + nxt / now * (1 - a))
                    a_t = v / (v + s2_t)
                    u = x / broadcast_to(view.marginal_coeffs(t)[0], x)
                    k = (1 - a_t) / (1 - c).clamp_min(1e-12)
                    x0_m = broadcast_to(k, x) * (x0_m - broadcast_to(c, x) * u) + broadcast_to(a_t, x) * u
            residual = obs.project(obs.observed.to(x0_m.dtype) - x0_m)
            log_g = gaussian_log_likelihood(residual, r2.detach(), obs.num_observed.to(r2))
            extra = {}
            if proposal:
                (grad,) = torch.autograd.grad(log_g.sum(), x)
                extra = {"grad": grad, "residual": residual.detach(), "r2": r2.detach()}
        if log is not None:
            log.append((_sigma(view, t), x_in.detach(), log_g.detach().double(), ev["log_g"]))
        return {**ev, "log_g": log_g.detach().double(), **extra}

    return original, _smc_evaluate


@contextlib.contextmanager
def twist_patch(steps: int, variance: str, mean: str = "endpoint", proposal: bool = False, log=None):
    original, replacement = patched_evaluate(steps, variance, mean, proposal, log)
    inverse.ScoreSdeInverseProblemPipeline._smc_evaluate = replacement
    try:
        yield
    finally:
        inverse.ScoreSdeInverseProblemPipeline._smc_evaluate = original


VARIANTS = ["jacobian", "landing", "mode", "jacobian+proposal", "landing+proposal", "mode+proposal"]


def run(problem, scheduler, particles, samples, steps, lookahead_steps, variance, seed=0):
    start = time.perf_counter()
    base, proposal = variance.split("+")[0], variance.endswith("+proposal")
    lookahead_steps = 0 if variance == "tweedie" else lookahead_steps
    if lookahead_steps == 1 and variance == "landing+proposal":  # the library's option
        x = sample(problem, scheduler, particles, samples, steps, seed, smc_lookahead=True)
    else:
        mean = "mode" if base == "mode" else "endpoint"
        with twist_patch(lookahead_steps, "jacobian" if base == "jacobian" else "landing", mean, proposal):
            x = sample(problem, scheduler, particles, samples, steps, seed)
    metrics = problem.metrics((x + 1) / 2)
    noise = monte_carlo_noise(problem, samples)
    return {
        "problem": problem.name,
        "scheduler": scheduler,
        "particles": particles,
        "lookahead_steps": lookahead_steps,
        "twist": f"lookahead {lookahead_steps} ({variance})" if lookahead_steps else "tweedie",
        "samples": samples,
        "seed": seed,
        "sampled": metrics["sampled"],
        "tv_over_noise": round(metrics["tv"] / noise["tv"], 2),
        "second_moment_error_over_noise": round(metrics["second_moment_error"] / noise["second_moment_error"], 2),
        "network_calls_per_image": steps * particles * (1 + lookahead_steps),
        "seconds": round(time.perf_counter() - start, 1),
    }


def twist_error(problem, configs: list[tuple[int, int, str]], particles: int = 64, outputs: int = 16) -> list[dict]:
    """Along one run (VE reverse diffusion) per config ``(_, m, variant)``: the twist minus the exact
    ``log p(y | x_t)`` (median and spread, nats) every 12 steps, for particles whose repainted pixels sit near a mode
    (``> 0.25`` or ``< -0.25`` on average) or between (as in ``smc_diagnostics.py``)."""
    from smc_diagnostics import sample

    free, rows = problem.unobserved().flatten(), []
    for _, m, variant in configs:
        base, proposal = variant.split("+")[0], variant.endswith("+proposal")
        log: list = []
        mean = "mode" if base == "mode" else "endpoint"
        with twist_patch(m, "jacobian" if base in ("jacobian", "tweedie") else "landing", mean, proposal, log):
            sample(problem, "VE RD", particles, outputs, 100)
        for sigma, x, log_g, _ in log[::12] + log[-1:]:
            error = log_g - problem.exact_twist(x, sigma**2)
            side = x.double().flatten(1)[:, free].mean(1)
            row = {"problem": problem.name, "lookahead_steps": m, "twist": variant, "sigma": round(float(sigma[0]), 3)}
            for kind, sel in (("plus", side > 0.25), ("minus", side < -0.25), ("between", side.abs() <= 0.25)):
                row[f"{kind}_particles"] = int(sel.sum())
                row[f"{kind}_median_nats"] = round(float(error[sel].median()), 1) if sel.any() else None
                row[f"{kind}_std_nats"] = round(float(error[sel].std()), 1) if sel.sum() > 1 else None
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


DEFAULT_CONFIGS = ["8:0", "8:1:landing+proposal", "16:0", "16:1:landing+proposal"]
DEFAULT_PROBLEMS = ["issue-16d", "tail-16d", "between-64d", "random-3", "two-modes", "three-hues"]


def parse_config(text: str) -> tuple[int, int, str]:
    """``"K:m[:variant]"``: particles, lookahead steps (0 = the sampler's own twist) and the variant."""
    parts = text.split(":")
    particles, steps = int(parts[0]), int(parts[1])
    variant = parts[2] if len(parts) > 2 else "landing+proposal"
    if variant not in VARIANTS or particles < 1 or steps < 0:
        raise ValueError(f"bad config {text!r}: K:m[:variant] with variant in {VARIANTS}")
    return particles, steps, variant if steps else "tweedie"


def markdown(rows: list[dict]) -> str:
    """The README table (TV / noise, second-moment error / noise in brackets, per problem, scheduler and config),
    then per particle count and scheduler the means over the problems and the worst cells, Tweedie -> lookahead."""
    configs = list(dict.fromkeys((r["particles"], r["lookahead_steps"]) for r in rows))
    calls = {(r["particles"], r["lookahead_steps"]): r["network_calls_per_image"] for r in rows}
    heads = [f"K={k} {'LA' if m else 'TDS'} ({calls[k, m]})" for k, m in configs]
    lines = ["| problem | scheduler | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(configs)]
    cell = {(r["problem"], r["scheduler"], r["particles"], r["lookahead_steps"]): r for r in rows}
    for problem, scheduler in dict.fromkeys((r["problem"], r["scheduler"]) for r in rows):
        values = []
        for k, m in configs:
            r = cell[problem, scheduler, k, m]
            values.append(f"{r['tv_over_noise']:.1f} ({r['second_moment_error_over_noise']:.1f})")
        lines.append(f"| {problem} | {scheduler} | " + " | ".join(values) + " |")
    lines.append("")
    steps = sorted({m for _, m in configs})

    def mean(key: str, k: int, m: int, scheduler: str) -> str:
        sel = [r[key] for r in rows if (r["particles"], r["lookahead_steps"], r["scheduler"]) == (k, m, scheduler)]
        return f"{sum(sel) / len(sel):.1f}"

    for k in dict.fromkeys(k for k, _ in configs):
        for scheduler in dict.fromkeys(r["scheduler"] for r in rows):
            tv = " -> ".join(mean("tv_over_noise", k, m, scheduler) for m in steps)
            m2 = " -> ".join(mean("second_moment_error_over_noise", k, m, scheduler) for m in steps)
            lines.append(f"* K={k} {scheduler}: mean TV / noise {tv}, second-moment error / noise {m2}")
    for m in steps:
        sel = [r for r in rows if r["lookahead_steps"] == m]
        worst_tv = max(sel, key=lambda r: r["tv_over_noise"])
        worst_m2 = max(sel, key=lambda r: r["second_moment_error_over_noise"])
        lines.append(
            f"* worst {'LA' if m else 'TDS'}: TV / noise {worst_tv['tv_over_noise']:.1f} ({worst_tv['problem']}, "
            f"{worst_tv['scheduler']}, K={worst_tv['particles']}), second-moment error / noise "
            f"{worst_m2['second_moment_error_over_noise']:.1f} ({worst_m2['problem']}, {worst_m2['scheduler']}, "
            f"K={worst_m2['particles']})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problems", nargs="+", default=None, help=f"default {DEFAULT_PROBLEMS} (all with --held-out)"
    )
    parser.add_argument(
        "--held-out", action="store_true", help="the held-out problems of conditional_accuracy.py (writes *_held_out)"
    )
    parser.add_argument("--schedulers", nargs="+", default=["VE RD", "VP EM", "VP DDIM"])
    parser.add_argument(
        "--configs", nargs="+", default=DEFAULT_CONFIGS, help="K:m[:variant] (m = 0: the sampler's twist)"
    )
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--twist-error",
        action="store_true",
        help="instead: the twist minus the exact log p(y | x_t) along a run (VE), per config, on --problems; a single "
        "Gaussian (gaussian-16d) checks that the 'mode' variant is exact there",
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "smc_lookahead.json"))
    parser.add_argument("--markdown", action="store_true", help="print the README table and summary from --out")
    args = parser.parse_args()
    if args.held_out:
        args.out = os.path.splitext(args.out)[0] + "_held_out.json"
    if args.markdown:
        with open(args.out) as fh:
            print(markdown(json.load(fh)))
        return
    torch.set_num_threads(1)
    configs = [parse_config(c) for c in args.configs]
    problems = {p.name: p for p in (held_out_problems() if args.held_out else tuning_problems())}
    if args.problems is None:
        args.problems = list(problems) if args.held_out else DEFAULT_PROBLEMS
    # One Gaussian (issue-16d's first component alone): p(x_0 | x_t) is unimodal, the 'mode' twist must be exact.
    problems["gaussian-16d"] = _inpaint(
        "gaussian-16d", [0.35], [0.5], [0.1], [0.1], 0.058, (1, 4, 4), _left_half(4, 4), [1.0]
    )
    if args.twist_error:
        rows = [row for name in args.problems for row in twist_error(problems[name], configs)]
        write_report(os.path.splitext(args.out)[0] + "_twist_error.json", rows)
        return
    rows = []
    for name in args.problems:
        for scheduler in args.schedulers:
            for particles, m, variant in configs:
                row = run(problems[name], scheduler, particles, args.samples, args.steps, m, variant, args.seed)
                print(json.dumps(row), flush=True)
                rows.append(row)
    write_report(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
