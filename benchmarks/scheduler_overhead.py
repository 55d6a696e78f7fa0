"""Scheduler overhead of a full predictor-corrector sampling loop.

Times a 1000-step PC loop (reverse-diffusion predictor + one Langevin corrector step: 2000 model calls)
with a small ``UNet2DModel``, for our ``VESDEScheduler`` and for Diffusers' ``ScoreSdeVeScheduler`` in the
same run, and reports ``loop time / (model calls x one model call)``: 1.00 means the scheduler is free.

    python benchmarks/scheduler_overhead.py [--steps 1000] [--batch 8] [--size 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from _report import write_report
from diffusers import ScoreSdeVeScheduler, UNet2DModel

from sde_diffusers import VESDEScheduler


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TimedModel:
    """Calls the model and adds up the time spent in it, so that loop and model time come from one run."""

    def __init__(self, model, device: torch.device) -> None:
        self.model, self.device, self.seconds = model, device, 0.0

    def __call__(self, *args):
        sync(self.device)
        start = time.perf_counter()
        out = self.model(*args)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


def build_unet(size: int, device: torch.device) -> UNet2DModel:
    unet = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return unet.to(device).eval()


@torch.no_grad()
def unit_call_time(unet, x, sigma, device, repeats: int) -> float:
    for _ in range(5):
        unet(x, sigma)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        unet(x, sigma)
        sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


@torch.no_grad()
def ours(unet, shape, steps, device) -> tuple[float, int]:
    scheduler = VESDEScheduler(sigma_max=50.0, predictor="reverse_diffusion", corrector="langevin", snr=0.16)
    scheduler.set_timesteps(steps, device=device)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=device) * scheduler.init_noise_sigma
    calls = 0
    sync(device)
    start = time.perf_counter()
    for t in scheduler.timesteps:
        out = unet(x, t.expand(shape[0])).sample
        x = scheduler.step(out, t, x, generator=gen).prev_sample
        calls += 1
    sync(device)
    return time.perf_counter() - start, calls


@torch.no_grad()
def diffusers_ve(unet, shape, steps, device) -> tuple[float, int]:
    """The loop of Diffusers' ScoreSdeVePipeline."""
    scheduler = ScoreSdeVeScheduler(num_train_timesteps=steps, sigma_max=50.0, snr=0.16, correct_steps=1)
    scheduler.set_timesteps(steps, device=device)
    scheduler.set_sigmas(steps)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=device) * scheduler.init_noise_sigma
    calls = 0
    sync(device)
    start = time.perf_counter()
    for i, t in enumerate(scheduler.timesteps):
        sigma_t = scheduler.sigmas[i] * torch.ones(shape[0], device=device)
        for _ in range(scheduler.config.correct_steps):
            out = unet(x, sigma_t).sample
            x = scheduler.step_correct(out, x, generator=gen).prev_sample
            calls += 1
        out = unet(x, sigma_t).sample
        x = scheduler.step_pred(out, t, x, generator=gen).prev_sample
        calls += 1
    sync(device)
    return time.perf_counter() - start, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings stable)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scheduler_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    unet = build_unet(args.size, device)
    shape = (args.batch, 3, args.size, args.size)
    x = torch.randn(shape, device=device)
    sigma = torch.full((args.batch,), 1.0, device=device)
    rows = []
    for name, loop in (
        ("sde-diffusers VESDEScheduler", ours),
        ("diffusers ScoreSdeVeScheduler", diffusers_ve),
    ):
        unit = unit_call_time(unet, x, sigma, device, repeats=20)
        timed = TimedModel(unet, device)
        wall, calls = loop(timed, shape, args.steps, device)
        rows.append(
            {
                "scheduler": name,
                "model_calls": calls,
                "loop_s": wall,
                "unit_call_ms": unit * 1e3,
                "ratio_unit": wall / (calls * unit),
                # Model time summed inside the same loop: immune to load drifting between measurements.
                "ratio_in_loop": wall / timed.seconds,
            }
        )
    print(f"PC loop, {args.steps} steps + 1 corrector step, batch {args.batch}, {args.size}x{args.size}, {device}")
    print(
        f"{'scheduler':32s} {'calls':>6s} {'loop s':>8s} {'1 call ms':>10s} "
        f"{'loop/(calls*unit)':>18s} {'loop/model time':>16s}"
    )
    for r in rows:
        print(
            f"{r['scheduler']:32s} {r['model_calls']:6d} {r['loop_s']:8.2f} {r['unit_call_ms']:10.3f} "
            f"{r['ratio_unit']:18.3f} {r['ratio_in_loop']:16.3f}"
        )
    out = {
        "benchmark": "scheduler_overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {device}",
        "args": vars(args),
        "rows": rows,
    }
    write_report(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
