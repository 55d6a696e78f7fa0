"""Trainer overhead: optimizer steps per second of ``sde_diffusers.training`` against a bare PyTorch loop.

Both sides train the same model on the same batches with the same loss, optimizer and per-step work:
``denoising_score_matching_loss`` on a DDPM++ (VP SDE), times and noise drawn from one generator for the batch,
AdamW, gradient clipping, a warm-up learning-rate schedule and an EMA update (Diffusers' ``EMAModel``). The
trainer adds what it is for: ``accelerate`` (device placement, DDP wrapper, autocast, accumulation context),
loss bookkeeping, logging every ``--logging-steps`` steps and the progress bar. Sampling, checkpoints and
evaluation are switched off: they are not per-step costs. A second bare loop without clipping, schedule and EMA
("minimal") shows what those cost.

Rounds alternate the loops so that load from other processes hits both alike; the table reports the median
over rounds of steps/s (the first step of each run excluded) and the overhead as the median over rounds of
``1 - trainer / bare`` (paired within a round). Writes ``benchmarks/results/train_throughput.json``.

    python benchmarks/train_throughput.py                 # CPU, one thread
    python benchmarks/train_throughput.py --device cuda --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

CASES = {
    # name: (preset, resolution, batch size)
    "ddpmpp-tiny 8x8 digits, batch 32": ("ddpmpp-tiny", 8, 32),
    "ddpmpp-tiny 16x16 digits, batch 64": ("ddpmpp-tiny", 16, 64),
}


def trainer_steps_per_second(preset: str, resolution: int, batch: int, steps: int, args) -> float:
    from sde_diffusers.training import TrainingConfig, train

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainingConfig(
            dataset_name="digits",
            model_preset=preset,
            resolution=resolution,
            sde="vp",
            train_batch_size=batch,
            max_train_steps=steps,
            learning_rate=1e-3,
            lr_warmup_steps=10,
            ema_decay=0.999,
            output_dir=out,
            report_to="tensorboard",
            logging_steps=args.logging_steps,
            progress_bar=True,
            checkpointing_steps=0,
            save_final_checkpoint=False,
            num_sample_images=1,
            num_inference_steps=1,
            seed=0,
            mixed_precision=args.mixed_precision,
            use_cpu=args.device == "cpu",
        )
        # The export at the end (one 1-step sample, a save) is outside the timed loop.
        result = train(cfg)
    return float(result.steps_per_second)


def bare_steps_per_second(preset: str, resolution: int, batch: int, steps: int, args, minimal: bool) -> float:
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from sde_diffusers.data import load_image_data
    from sde_diffusers.losses import denoising_score_matching_loss, sample_time
    from sde_diffusers.models import from_preset
    from sde_diffusers.parameterization import make_score_fn
    from sde_diffusers.schedulers import VPSDEScheduler

    device = torch.device(args.device)
    data = load_image_data("digits", resolution=resolution)
    images = data.images.to(device)
    torch.manual_seed(0)
    model = from_preset(preset, in_channels=1, sample_size=resolution).to(device).train()
    sde = VPSDEScheduler().sde
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=10, num_training_steps=steps)
    ema = EMAModel(model.parameters(), decay=0.999, foreach=True)
    gen = torch.Generator(device=device).manual_seed(1)
    perm_gen = torch.Generator().manual_seed(0)
    score_fn = make_score_fn(model, sde, model.prediction_type, model.time_input)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")
    per_epoch = len(images) // batch
    perm = None
    elapsed, timed = 0.0, 0
    for step in range(steps):
        start = time.perf_counter()
        k = step % per_epoch
        if k == 0:
            perm = torch.randperm(len(images), generator=perm_gen).to(device)
        x = images[perm[k * batch : (k + 1) * batch]].float() / 127.5 - 1.0
        t = sample_time(sde, batch, 1e-5, generator=gen, device=device)
        noise = torch.randn(x.shape, generator=gen, device=device)
        with autocast:
            loss = denoising_score_matching_loss(score_fn, sde, x, t=t, noise=noise)
        loss.backward()
        if not minimal:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not minimal:
            sched.step()
            ema.step(model.parameters())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step > 0:
            elapsed += time.perf_counter() - start
            timed += 1
    return timed / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_MININTERVAL", "0.1")

    rows = []
    for name in args.cases:
        preset, resolution, batch = CASES[name]
        runs = {"trainer": [], "bare (same algorithm)": [], "bare (minimal)": []}
        for _ in range(args.rounds):
            runs["bare (same algorithm)"].append(
                bare_steps_per_second(preset, resolution, batch, args.steps, args, False)
            )
            runs["trainer"].append(trainer_steps_per_second(preset, resolution, batch, args.steps, args))
            runs["bare (minimal)"].append(bare_steps_per_second(preset, resolution, batch, args.steps, args, True))
        medians = {k: statistics.median(v) for k, v in runs.items()}
        # Each round runs the loops back to back, so a round's ratio sees the same background load on both sides.
        ratios = [t / b for t, b in zip(runs["trainer"], runs["bare (same algorithm)"], strict=True)]
        overhead = 1.0 - statistics.median(ratios)
        rows.append(
            {
                "case": name,
                "preset": preset,
                "resolution": resolution,
                "batch_size": batch,
                "steps_per_second": medians,
                "runs": runs,
                "paired_ratios": ratios,
                "trainer_overhead": overhead,
            }
        )

    print(
        f"\n{'case':38s} {'trainer':>9s} {'bare':>9s} {'minimal':>9s} {'overhead':>9s}   (steps/s, median of "
        f"{args.rounds} rounds x {args.steps} steps, {args.device}, {args.threads} thread(s))"
    )
    for r in rows:
        s = r["steps_per_second"]
        print(
            f"{r['case']:38s} {s['trainer']:9.2f} {s['bare (same algorithm)']:9.2f} {s['bare (minimal)']:9.2f} "
            f"{100 * r['trainer_overhead']:8.1f}%"
        )
    record = {
        "benchmark": "train_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "threads": args.threads,
        "mixed_precision": args.mixed_precision,
        "steps_per_run": args.steps,
        "rounds": args.rounds,
        "logging_steps": args.logging_steps,
        "target": "trainer overhead < 5% of the bare loop's step time",
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
