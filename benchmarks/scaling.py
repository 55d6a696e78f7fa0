"""Sampling throughput with 1..N processes (``torchrun``), and what exact reproducibility costs.

For each process count ``k`` the script launches ``torchrun --standalone --nproc_per_node k`` on itself (worker
mode). Every worker builds the same model (same seed), and the processes draw ``--num-samples`` images together
with :func:`sde_diffusers.evaluation.sampling.draw_samples` (blocks of ``--batch-size`` split across them, images
gathered on every process, as ``sde-diffusers evaluate`` does). The main process times the draw after a warm-up
block and a barrier. Two modes are timed: batched (the default) and ``batch_invariant=True`` (every sample drawn as
a batch of one: bit-identical results for any batch size). A SHA-256 of the images shows that every process count
gives the same images.

Rounds alternate the process counts so that load from other jobs hits them alike; the table reports the median over
rounds. Scaling efficiency = samples/s with ``k`` processes / (``k`` x samples/s with one). The one-process worker
also draws the images with half the batch size and counts the 8-bit pixels that differ (batched mode: rounding of
batched network calls only; the random numbers of sample i depend on (seed, i) alone).

    python benchmarks/scaling.py                                   # CPU: 1 and 2 processes, 1 thread each
    python benchmarks/scaling.py --device cuda --processes 1 2 4 8 --preset ddpmpp-cifar10 --size 32 \\
        --channels 3 --num-samples 2048 --batch-size 128 --nfe 100

Writes ``benchmarks/results/scaling.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _report import write_report

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    parser.add_argument("--preset", default="ddpmpp-tiny", help="model preset (default: ddpmpp-tiny, 78k parameters)")
    parser.add_argument("--size", type=int, default=16, help="image size (default: 16)")
    parser.add_argument("--channels", type=int, default=1, help="image channels (default: 1)")
    parser.add_argument("--sampler", default="ancestral", help="evaluation sampler (default: ancestral)")
    parser.add_argument("--nfe", type=int, default=50, help="network evaluations per image (default: 50)")
    parser.add_argument("--num-samples", type=int, default=32, help="images per timed draw (default: 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per block (default: 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the process counts (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (default: 1)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # result path: run as a torchrun worker
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------
# Worker (one process of a torchrun launch)
# ---------------------------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    from sde_diffusers.distributed import Processes
    from sde_diffusers.evaluation.sampling import draw_samples
    from sde_diffusers.models import from_preset
    from sde_diffusers.pipelines import ScoreSdePipeline
    from sde_diffusers.schedulers import VPSDEScheduler

    torch.set_num_threads(args.threads)
    processes = Processes(args.device)
    torch.manual_seed(0)  # the same weights on every process
    unet = from_preset(args.preset, sample_size=args.size, in_channels=args.channels)
    pipe = ScoreSdePipeline(unet=unet, scheduler=VPSDEScheduler()).to(processes.device)

    def draw(batch_size: int, invariant: bool, count: int):
        return draw_samples(
            pipe,
            args.sampler,
            count,
            nfe=args.nfe,
            batch_size=batch_size,
            seed=0,
            processes=processes,
            batch_invariant=invariant,
        )

    result = {"num_processes": processes.num_processes, "modes": {}}
    for invariant in (False, True):
        draw(args.batch_size, invariant, args.batch_size * processes.num_processes)  # warm-up, one block each
        processes.all_gather(None)  # barrier
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = draw(args.batch_size, invariant, args.num_samples)
        seconds = time.perf_counter() - start
        images = (out.images * 255).round().to(torch.uint8).numpy()
        mode = {
            "seconds": seconds,
            "samples_per_s": args.num_samples / seconds,
            "images_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
            "nfe": out.nfe,
        }
        if processes.num_processes == 1 and args.batch_size > 1:
            half = draw(max(1, args.batch_size // 2), invariant, args.num_samples)
            other = (half.images * 255).round().to(torch.uint8).numpy()
            diff = abs(other.astype(int) - images.astype(int))
            mode["half_batch"] = {"pixels_differing": int((diff > 0).sum()), "max_levels": int(diff.max())}
            mode["pixels"] = int(images.size)
        result["modes"]["batch_invariant" if invariant else "batched"] = mode
    if processes.is_main_process:
        Path(args.worker).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------------------------------------
def launch(args: argparse.Namespace, k: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        forwarded = [
            *("--device", args.device, "--preset", args.preset, "--size", str(args.size)),
            *("--channels", str(args.channels), "--sampler", args.sampler, "--nfe", str(args.nfe)),
            *("--num-samples", str(args.num_samples), "--batch-size", str(args.batch_size)),
            *("--threads", str(args.threads), "--worker", str(path)),
        ]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(k)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        run = subprocess.run([*cmd, __file__, *forwarded], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"torchrun with {k} processes failed:\n{run.stderr[-4000:]}")
        return json.loads(path.read_text())


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    runs: dict[int, list[dict]] = {k: [] for k in args.processes}
    wall = time.perf_counter()
    for r in range(args.rounds):
        for k in args.processes if r % 2 == 0 else list(reversed(args.processes)):
            runs[k].append(launch(args, k))
            print(f"round {r + 1}/{args.rounds}, {k} process(es): done", flush=True)
    rows = []
    for mode in ("batched", "batch_invariant"):
        base = None
        for k in args.processes:
            rates = [run["modes"][mode]["samples_per_s"] for run in runs[k]]
            rate = statistics.median(rates)
            base = base or rate / k  # per process, at the first (smallest) count
            rows.append(
                {
                    "mode": mode,
                    "processes": k,
                    "samples_per_s": rate,
                    "samples_per_s_rounds": rates,
                    "scaling_efficiency": rate / (k * base),
                    "images_sha256": sorted({run["modes"][mode]["images_sha256"] for run in runs[k]}),
                }
            )
    same_images = {
        mode: len({h for row in rows if row["mode"] == mode for h in row["images_sha256"]}) == 1
        for mode in ("batched", "batch_invariant")
    }
    one = runs[args.processes[0]][0]["modes"] if args.processes[0] == 1 else {}
    report = {
        "settings": {k: v for k, v in vars(args).items() if k != "worker"},
        "rows": rows,
        "same_images_for_every_process_count": same_images,
        "half_batch_size_difference": {mode: one[mode].get("half_batch") for mode in one},
        "pixels": next((one[mode].get("pixels") for mode in one), None),
        "environment": {
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d"),
        },
        "wall_s": time.perf_counter() - wall,
    }
    out = Path(args.out)
    write_report(out, report)
    print(
        f"\n{args.preset} {args.channels}x{args.size}x{args.size}, {args.sampler} NFE {args.nfe}, "
        f"{args.num_samples} samples in blocks of {args.batch_size}, {args.device}, {args.threads} thread(s)/process"
    )
    print("| mode | processes | samples/s | scaling efficiency | same images for every process count |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['processes']} | {row['samples_per_s']:.2f} | {row['scaling_efficiency']:.2f} | "
            f"{'yes' if same_images[row['mode']] else 'NO'} |"
        )
    for mode, diff in report["half_batch_size_difference"].items():
        if diff:
            print(
                f"{mode}, half the batch size: {diff['pixels_differing']} of {report['pixels']} pixels differ "
                f"(at most {diff['max_levels']} level(s))"
            )
    print(f"wrote {out} ({report['wall_s']:.0f} s, load average {report['environment']['load_average'][0]:.1f})")


if __name__ == "__main__":
    main()
