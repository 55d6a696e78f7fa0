"""Helpers shared by the ``sample``, ``evaluate`` and ``likelihood`` commands (not a command itself)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..validation import check_int


def add_run_arguments(parser: argparse.ArgumentParser, *, shards: str | None = None, device: bool = True) -> None:
    """Options every scaled-out command takes: device, threads, progress, and ``--batch-invariant``."""
    if device:
        parser.add_argument(
            "--device",
            default=None,
            help="torch device (default: this process's GPU under a launcher, else cuda if available, else cpu)",
        )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process for torch (default: torch's; 1 is fastest on a busy shared machine)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    if shards is not None:
        parser.add_argument(
            "--batch-invariant",
            action="store_true",
            help=f"compute every {shards} as a batch of one (slower): results bit-identical for any --batch-size",
        )


def check_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (checked)."""
    if args.threads is not None:
        torch.set_num_threads(check_int("--threads", args.threads))


class Progress:
    """One progress bar on the main process counting every process's finished items.

    ``model_call()`` (this process's network calls) updates a postfix at most twice a second, so a long block
    still shows movement.
    """

    def __init__(self, total: int, *, unit: str, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)
        self.calls = 0
        self._shown = 0.0

    def update(self, count: int, **postfix: Any) -> None:
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(count)

    def model_call(self) -> None:
        self.calls += 1
        now = time.monotonic()
        if now - self._shown > 0.5:
            self._shown = now
            self.bar.set_postfix_str(f"model calls here: {self.calls}", refresh=True)

    def close(self) -> None:
        self.bar.close()


def check_writable_file(path: str | os.PathLike, option: str) -> None:
    """Fail now, not after hours of sampling, if ``path`` cannot be written (its folder may not exist yet)."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{option} {str(target)!r} is a folder, expected a file path")
    parent = next((p for p in target.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(f"{option} {str(target)!r} cannot be written ({str(parent)!r} is not a writable folder)")
