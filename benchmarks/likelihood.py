"""Likelihood benchmark: ours against a faithful re-implementation of the reference (score_sde) method.

One run, one model, the same images (batch 64, dequantized once), the same Hutchinson probe for every solver
(common random numbers, so bits/dim differences are solver differences):

* ``reference``: ``scipy.integrate.solve_ivp(method="RK45")`` on the flattened batch, a NumPy round trip per
  evaluation and two network passes per evaluation (the drift, then the drift again inside the divergence's
  vector-Jacobian product), as score_sde's ``likelihood.py`` does.
* ``ours``: :func:`sde_diffusers.likelihood.log_likelihood` (on-device Dormand–Prince, one forward pass and
  one VJP per evaluation), at the reference's solver and tolerance (``step_control="batch"`` is the same
  algorithm step for step; ``"per_sample"`` is our default), then at cheaper settings.
* ``tight``: ours at rtol = atol = 1e-6, the ground truth for the cheaper settings.

The unit cost (one forward pass + one VJP at batch 64) is measured in the same run. Targets:
(a) at the reference's solver and tolerance, the same bits/dim to 0.01 and wall time <= 1.05 x NFE x unit;
(b) with solver/tolerance chosen freely, bits/dim within 0.01 of the tight solution and >= 3x faster than the
reference.

The model is a small DDPM++ (``--preset``, default ``ddpmpp-tiny``) trained for ``--train-steps`` steps of
denoising score matching on MNIST (shipped with the package) so that the ODE is as stiff as a real model's,
or loaded with ``--model-dir`` (a saved pipeline). Results go to ``benchmarks/results/likelihood.json``, one
entry per device type (``cpu``, ``cuda``).

Usage::

    python benchmarks/likelihood.py                    # CPU, ~5 minutes on one core
    python benchmarks/likelihood.py --device cuda --preset ddpmpp-small --train-steps 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import integrate

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from sde_diffusers.evaluation.datasets import load_builtin  # noqa: E402
from sde_diffusers.likelihood import log_likelihood  # noqa: E402
from sde_diffusers.losses import denoising_score_matching_loss  # noqa: E402
from sde_diffusers.models import from_preset  # noqa: E402
from sde_diffusers.parameterization import make_score_fn  # noqa: E402
from sde_diffusers.sde import get_sde  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "likelihood.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------
# The reference method (score_sde/likelihood.py), re-implemented: scipy RK45, NumPy round trips, two passes
# ---------------------------------------------------------------------------------------------------------
def reference_likelihood(score_fn, sde, data, probe, offset_bits, rtol=1e-5, atol=1e-5, eps=1e-5, method="RK45"):
    shape = data.shape

    def drift_fn(x, t):
        return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]

    def div_fn(x, t, noise):
        with torch.enable_grad():
            x.requires_grad_(True)
            fn_eps = torch.sum(drift_fn(x, t) * noise)
            grad_fn_eps = torch.autograd.grad(fn_eps, x)[0]
        x.requires_grad_(False)
        return torch.sum(grad_fn_eps * noise, dim=tuple(range(1, len(x.shape))))

    with torch.no_grad():

        def ode_func(t, x):
            sample = torch.from_numpy(x[: -shape[0]].reshape(shape)).to(data.device).type(torch.float32)
            vec_t = torch.ones(sample.shape[0], device=sample.device) * t
            drift = drift_fn(sample, vec_t).detach().cpu().numpy().reshape((-1,))
            logp_grad = div_fn(sample, vec_t, probe).detach().cpu().numpy().reshape((-1,))
            return np.concatenate([drift, logp_grad], axis=0)

        init = np.concatenate([data.detach().cpu().numpy().reshape((-1,)), np.zeros((shape[0],))], axis=0)
        solution = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method=method)
        zp = solution.y[:, -1]
        z = torch.from_numpy(zp[: -shape[0]].reshape(shape)).to(data.device).type(torch.float32)
        delta_logp = torch.from_numpy(zp[-shape[0] :].reshape((shape[0],))).to(data.device).type(torch.float32)
        prior_logp = sde.prior_logp(z)
        bpd = -(prior_logp + delta_logp) / np.log(2) / np.prod(shape[1:]) + offset_bits
        return bpd, solution.nfev


# ---------------------------------------------------------------------------------------------------------
# Model and data
# ---------------------------------------------------------------------------------------------------------
def train_quickly(model, sde, images, steps, batch_size, lr, device, seed):
    """A few hundred steps of denoising score matching: enough for a non-trivial, stiff probability flow."""
    score_fn = make_score_fn(model, sde, model.prediction_type, model.time_input)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=torch.Generator().manual_seed(seed + step))
        x0 = images[idx].to(device)
        loss = denoising_score_matching_loss(score_fn, sde, x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def load_model(args, device):
    if args.model_dir:
        from sde_diffusers.commands.likelihood import _load_model_and_scheduler
        from sde_diffusers.likelihood import resolve_score_fn

        model, scheduler = _load_model_and_scheduler(args.model_dir)
        model = model.to(device).eval()
        score_fn, sde = resolve_score_fn(model, None, scheduler_config=scheduler)
        return model, score_fn, sde, {"model_dir": args.model_dir}
    sde = get_sde(args.sde)
    torch.manual_seed(args.seed)
    overrides = {"sample_size": 28, "in_channels": 1}
    model = from_preset(args.preset, **overrides).to(device)
    train_images = load_builtin("mnist", split="train")[0] * 2 - 1
    t0 = time.perf_counter()
    losses = train_quickly(model, sde, train_images, args.train_steps, 64, args.lr, device, args.seed)
    info = {
        "preset": args.preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": args.train_steps,
        "train_seconds": time.perf_counter() - t0,
        "final_loss": statistics.fmean(losses[-50:]) if losses else None,
    }
    score_fn = make_score_fn(model, sde, model.prediction_type, model.time_input)
    return model, score_fn, sde, info


def unit_cost(score_fn, sde, x, probe, device, repeats):
    """Median seconds of one forward pass + one VJP (the work of one evaluation of ours)."""
    t = torch.full((x.shape[0],), 0.5, device=device)

    def once():
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            drift = sde.reverse(score_fn, probability_flow=True).sde(xx, t)[0]
            torch.autograd.grad(drift, xx, probe)

    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        once()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_host_syncs(device, fn):
    """Implicit host-device synchronisations during ``fn()`` (CUDA's sync debug mode), and its result."""
    if device.type != "cuda":
        return None
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught), out


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="ddpmpp-tiny")
    parser.add_argument("--sde", default="subvp", choices=["vp", "subvp", "ve"])
    parser.add_argument("--model-dir", default=None, help="a saved pipeline instead of the quickly trained model")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the machine is shared)")
    parser.add_argument("--unit-repeats", type=int, default=20)
    parser.add_argument(
        "--allow-tf32",
        action="store_true",
        help="allow TF32 on CUDA (off by default: its ~1e-3 rounding is far above rtol = 1e-5)",
    )
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32
    torch.backends.cudnn.allow_tf32 = args.allow_tf32

    model, score_fn, sde, model_info = load_model(args, device)
    model.requires_grad_(False)  # only input gradients are needed, for every method alike
    test = load_builtin("mnist", split="test")[0][: args.batch_size]
    offset_bits = 7.0  # 8-bit data in [-1, 1]
    gen = torch.Generator().manual_seed(args.seed)
    # dequantize once (k + u) / 256, so every method sees the same continuous images
    x = ((test * 255).round() + torch.rand(test.shape, generator=gen)) / 256 * 2 - 1
    x = x.to(device)
    probe = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).float().to(device)

    unit = unit_cost(score_fn, sde, x, probe, device, args.unit_repeats)
    print(f"device {device} | model {model_info} | unit (forward + VJP, batch {len(x)}): {unit * 1e3:.2f} ms")

    def ours(**kw):
        def go():
            return log_likelihood(score_fn, sde, x, probes=probe[None], offset_bits=offset_bits, **kw)

        out, seconds = timed(go, device)
        return out.bits_per_dim.double().cpu(), out.nfe, seconds

    rows = []

    def record(name, bpd, nfe, seconds, **settings):
        # The unit cost is re-measured next to every row: on a shared machine the load drifts during a run.
        local_unit = 0.5 * (
            unit_cost(score_fn, sde, x, probe, device, 5) + unit_cost(score_fn, sde, x, probe, device, 5)
        )
        rows.append(
            {
                "name": name,
                **settings,
                "nfe": nfe,
                "seconds": seconds,
                "unit_seconds": local_unit,
                "seconds_per_nfe_unit": seconds / (nfe * local_unit),
                "bits_per_dim": float(bpd.mean()),
                "per_image": bpd,
            }
        )
        print(
            f"  {name:<28} nfe {nfe:5d}  {seconds:8.2f} s  {seconds / (nfe * local_unit):5.2f} x NFE*unit  "
            f"bpd {float(bpd.mean()):.4f}"
        )

    # warm-up (allocator, kernels) so the first timed method is not penalised
    ours(method="dopri5", rtol=1e-2, atol=1e-2)

    ref_bpd, ref_nfe = None, None
    (ref_bpd, ref_nfe), seconds = timed(lambda: reference_likelihood(score_fn, sde, x, probe, offset_bits), device)
    record(
        "reference (scipy RK45)",
        ref_bpd.double().cpu(),
        ref_nfe,
        seconds,
        method="RK45",
        tol=1e-5,
        step_control="batch",
    )
    for step_control in ("batch", "per_sample"):
        bpd, nfe, seconds = ours(method="dopri5", rtol=1e-5, atol=1e-5, step_control=step_control)
        record(
            f"ours dopri5 1e-5 {step_control}",
            bpd,
            nfe,
            seconds,
            method="dopri5",
            tol=1e-5,
            step_control=step_control,
        )
    bpd, nfe, seconds = ours(method="torchdiffeq:dopri5", rtol=1e-5, atol=1e-5)
    record(
        "torchdiffeq dopri5 1e-5",
        bpd,
        nfe,
        seconds,
        method="torchdiffeq:dopri5",
        tol=1e-5,
        step_control="batch",
    )
    tight_bpd, nfe, seconds = ours(method="dopri5", rtol=1e-6, atol=1e-6)
    record(
        "tight: ours dopri5 1e-6",
        tight_bpd,
        nfe,
        seconds,
        method="dopri5",
        tol=1e-6,
        step_control="per_sample",
    )
    for method in ("dopri5", "bosh3"):
        for tol in (1e-4, 1e-3, 1e-2):
            bpd, nfe, seconds = ours(method=method, rtol=tol, atol=tol)
            record(f"ours {method} {tol:g}", bpd, nfe, seconds, method=method, tol=tol, step_control="per_sample")

    syncs = count_host_syncs(device, lambda: ours(method="dopri5", rtol=1e-5, atol=1e-5))
    syncs_ref = count_host_syncs(
        device, lambda: reference_likelihood(score_fn, sde, x, probe, offset_bits, rtol=1e-3, atol=1e-3)
    )
    if syncs is not None:
        print(
            f"host synchronisations during one solve: ours {syncs[0]} for {syncs[1][1]} evaluations; "
            f"reference {syncs_ref[0]} for {syncs_ref[1][1]} evaluations (at 1e-3)"
        )

    ref = rows[0]
    tight = float(tight_bpd.mean())
    for row in rows:
        row["delta_bpd_vs_reference"] = row["bits_per_dim"] - ref["bits_per_dim"]
        row["delta_bpd_vs_tight"] = row["bits_per_dim"] - tight
        row["max_image_delta_vs_tight"] = float((row.pop("per_image") - tight_bpd).abs().max())
        row["speedup_vs_reference"] = ref["seconds"] / row["seconds"]

    equal = rows[1]  # same algorithm as the reference (batch-coupled dopri5 at 1e-5)
    equal_default = rows[2]
    fast_ok = [r for r in rows[5:] if abs(r["delta_bpd_vs_tight"]) < 0.01]
    fastest = min(fast_ok, key=lambda r: r["seconds"]) if fast_ok else None
    summary = {
        "a_equal_solver_delta_bpd": equal["delta_bpd_vs_reference"],
        "a_equal_solver_time_over_nfe_unit": equal["seconds_per_nfe_unit"],
        "a_equal_solver_speedup": equal["speedup_vs_reference"],
        "a_per_sample_default_delta_bpd": equal_default["delta_bpd_vs_reference"],
        "a_per_sample_default_speedup": equal_default["speedup_vs_reference"],
        "reference_time_over_nfe_unit": ref["seconds_per_nfe_unit"],
        "host_syncs_per_solve": None
        if syncs is None
        else {
            "ours": syncs[0],
            "ours_nfe": syncs[1][1],
            "reference": syncs_ref[0],
            "reference_nfe": syncs_ref[1][1],
        },
        "b_fastest_within_0.01": fastest["name"] if fastest else None,
        "b_delta_bpd_vs_tight": fastest["delta_bpd_vs_tight"] if fastest else None,
        "b_speedup_vs_reference": fastest["speedup_vs_reference"] if fastest else None,
        "targets_met": {
            "a_bpd": abs(equal["delta_bpd_vs_reference"]) < 0.01,
            "a_time": equal["seconds_per_nfe_unit"] <= 1.05,
            "b": bool(fastest and fastest["speedup_vs_reference"] >= 3),
        },
    }

    print()
    header = (
        f"| {'method':<28} | {'NFE':>5} | {'time (s)':>8} | {'x NFE*unit':>10} | {'bits/dim':>8} | "
        f"{'Δ vs ref':>8} | {'Δ vs tight':>10} | {'speed-up':>8} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['name']:<28} | {r['nfe']:>5} | {r['seconds']:>8.2f} | {r['seconds_per_nfe_unit']:>10.2f} | "
            f"{r['bits_per_dim']:>8.4f} | {r['delta_bpd_vs_reference']:>+8.4f} | {r['delta_bpd_vs_tight']:>+10.4f} | "
            f"{r['speedup_vs_reference']:>7.2f}x |"
        )
    print()
    print(json.dumps(summary, indent=2))

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    entry = {
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": len(x),
        "image_shape": list(x.shape[1:]),
        "sde": sde.config | {"type": type(sde).__name__},
        "model": model_info,
        "unit_seconds": unit,
        "rows": rows,
        "summary": summary,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(output.read_text()) if output.is_file() else {}
    results[device.type] = entry
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")
    return 0 if all(summary["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
