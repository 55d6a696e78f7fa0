"""Speed of our NCSN++ against Diffusers' ``UNet2DModel`` of the google/ncsnpp structure, side by side in one run.

Three networks at CIFAR-10 size (32x32x3) with the paper's channel counts (nf 128, channel multipliers
(1, 2, 2, 2), 4 residual blocks per resolution, attention at 16x16, FIR resampling, BigGAN blocks):

* ``ours (paper preset)``: ``NCSNppModel.from_preset("ncsnpp-cifar10")``, the NCSN++ cont. network of the paper
  (residual input pyramid), the one the released CIFAR-10 checkpoints use;
* ``ours (google/ncsnpp structure)``: the same class with the output / input skip pyramids that the
  google/ncsnpp-* repos (converted from score_sde's 256-1024 px models) have;
* ``diffusers UNet2DModel``: ``SkipDownBlock2D`` / ``AttnSkipDownBlock2D`` / ``SkipUpBlock2D`` /
  ``AttnSkipUpBlock2D``, Fourier time embedding, as in the google/ncsnpp-celebahq-256 config, at 32 px.

For each it times a forward pass (eval mode, no grad) and a forward + backward pass (train mode, mean-square loss),
batch 8, on the CPU (1 thread unless ``--threads``) and on CUDA when there is a GPU. Models are timed in
interleaved rounds (one call of each per round), so a load change on a shared machine hits all of them alike; the
table reports the median over rounds and the ratio to Diffusers from the same rounds. On the CPU it records both
wall time and the process's CPU time; the ratio is taken from CPU time there (on an oversubscribed machine wall
time also counts the time spent waiting for a core), from wall time on CUDA.

    python benchmarks/model_speed.py [--batch 8] [--rounds 5] [--devices cpu,cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel

from sde_diffusers import NCSNppModel


def diffusers_ncsnpp(dropout: float) -> UNet2DModel:
    """UNet2DModel with the block layout of google/ncsnpp-celebahq-256, at CIFAR-10 size and channel counts."""
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=4,
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D", "SkipDownBlock2D"),
        up_block_types=("SkipUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"),
        time_embedding_type="fourier",
        mid_block_scale_factor=math.sqrt(2.0),
        norm_eps=1e-6,
        norm_num_groups=None,
        act_fn="silu",
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=1,
        downsample_padding=1,
        dropout=dropout,
    )


def build_models(dropout: float) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "ours (paper preset)": NCSNppModel.from_preset("ncsnpp-cifar10", dropout=dropout),
        "ours (google/ncsnpp structure)": NCSNppModel.from_preset(
            "ncsnpp-cifar10", dropout=dropout, progressive="output_skip", progressive_input="input_skip"
        ),
        "diffusers UNet2DModel": diffusers_ncsnpp(dropout),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model, x, sigma):
    with torch.no_grad():
        return model(x, sigma).sample


def _forward_backward(model, x, sigma):
    model.zero_grad(set_to_none=True)
    loss = model(x, sigma).sample.square().mean()
    loss.backward()
    return loss


def time_models(
    models, device, batch: int, rounds: int, warmup: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    """Wall and process-CPU seconds per call: ``(wall[name][pass], cpu[name][pass])``."""
    x = torch.randn(batch, 3, 32, 32, device=device)
    sigma = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), batch, device=device))
    times = {name: {"forward": [], "forward_backward": []} for name in models}
    cpu_times = {name: {"forward": [], "forward_backward": []} for name in models}
    for kind, fn, train in (("forward", _forward, False), ("forward_backward", _forward_backward, True)):
        for model in models.values():
            model.to(device).train(train)
            for _ in range(warmup):
                fn(model, x, sigma)
        _sync(device)
        for _ in range(rounds):
            for name, model in models.items():
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                fn(model, x, sigma)
                _sync(device)
                times[name][kind].append(time.perf_counter() - start)
                cpu_times[name][kind].append(time.process_time() - cpu_start)
    for model in models.values():
        model.to("cpu")
    return times, cpu_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one call of each model per round)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cuda-rounds", type=int, default=30)
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings stable)")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout of every model (the paper's 0.1)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = build_models(args.dropout)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    reference = "diffusers UNet2DModel"
    rows = []
    for device_name in [d.strip() for d in args.devices.split(",") if d.strip()]:
        if device_name == "cuda" and not torch.cuda.is_available():
            print("cuda: no GPU, skipped")
            continue
        device = torch.device(device_name)
        rounds = args.cuda_rounds if device.type == "cuda" else args.rounds
        times, cpu_times = time_models(models, device, args.batch, rounds, args.warmup)
        basis = cpu_times if device.type == "cpu" else times
        for name in models:
            for kind in ("forward", "forward_backward"):
                ratios = [a / b for a, b in zip(basis[name][kind], basis[reference][kind], strict=True)]
                wall_ratios = [a / b for a, b in zip(times[name][kind], times[reference][kind], strict=True)]
                rows.append(
                    {
                        "device": device_name,
                        "model": name,
                        "pass": kind,
                        "params": params[name],
                        "median_ms": 1e3 * statistics.median(times[name][kind]),
                        "min_ms": 1e3 * min(times[name][kind]),
                        "median_cpu_ms": 1e3 * statistics.median(cpu_times[name][kind]),
                        "ratio_to_diffusers": statistics.median(ratios),
                        "ratio_basis": "cpu time" if device.type == "cpu" else "wall time",
                        "wall_ratio_to_diffusers": statistics.median(wall_ratios),
                        "rounds": rounds,
                    }
                )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(
        f"NCSN++ at 32x32x3, nf 128, (1, 2, 2, 2), 4 blocks, batch {args.batch}; CPU threads {args.threads}"
        + (f"; GPU {gpu}" if gpu else "")
    )
    print(
        f"{'device':6s} {'model':32s} {'params':>8s} {'pass':>17s} {'wall ms':>9s} {'CPU ms':>9s} "
        f"{'vs diffusers':>13s} {'(wall)':>7s}"
    )
    for r in rows:
        print(
            f"{r['device']:6s} {r['model']:32s} {r['params'] / 1e6:7.1f}M {r['pass']:>17s} {r['median_ms']:9.0f} "
            f"{r['median_cpu_ms']:9.0f} {r['ratio_to_diffusers']:12.2f}x {r['wall_ratio_to_diffusers']:6.2f}x"
        )
    out = {
        "benchmark": "model_speed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
        + (f", {gpu}" if gpu else ""),
        "args": vars(args),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
