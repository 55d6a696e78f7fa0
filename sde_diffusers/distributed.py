"""Split per-item work (samples to draw, images to score) across the processes of one run, resumably.

Launch any sampling, evaluation or likelihood entry point with ``accelerate launch`` or ``torchrun`` and it runs
on every process: accelerate's :class:`~accelerate.PartialState` forms the process group (NCCL on GPUs, gloo on
CPUs) and this module splits the work and brings the results together. Three rules make a run reproducible:

* **Item i depends only on (seed, i).** Its random numbers come from its own CPU ``torch.Generator`` seeded with
  :func:`item_seed` ``(seed, i)``: the same on every process, device type and batch size.
* **Work comes in fixed blocks.** Items ``[0, n)`` are cut into blocks of ``block_size`` consecutive indices
  (:func:`split_blocks`); a block is always computed as one batch, whichever process computes it. Process ``r`` of
  ``w`` takes the ``r``-th block of every group of ``w`` blocks still to do, so any number of processes gives
  exactly the results of one process. (A different block size changes batched floating-point arithmetic, not the
  random numbers.)
* **Results meet on every process, files are the main process's.** After each round of blocks every process
  receives every block's result (:meth:`Processes.all_gather`); only the main process writes files. A process that
  fails tells the others at the same collective, so the run stops everywhere with its message instead of hanging.

:class:`ShardStore` keeps finished blocks as ``.npz`` files next to a manifest of the run's settings: written
atomically as the run goes, found again by a run started with the same settings (which computes only the rest),
refused with a clear error (and left untouched) when the settings differ. The blocks do not depend on the number
of processes, so a run may resume with another one.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .validation import check_int

__all__ = [
    "ProcessFailed",
    "Processes",
    "RunMismatchError",
    "ShardStore",
    "item_generators",
    "item_seed",
    "model_fingerprint",
    "run_blocks",
    "split_blocks",
]

T = TypeVar("T")

#: How long a process waits at a collective for the others (a round lasts one block on the slowest process).
DEFAULT_TIMEOUT = datetime.timedelta(hours=12)
#: Exceptions that describe bad input rather than a bug (the CLI prints them as one line and exits with 2).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)


# ---------------------------------------------------------------------------------------------------------
# Seeds and blocks
# ---------------------------------------------------------------------------------------------------------
def item_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` in a run seeded with ``seed``: a 63-bit hash of ``(seed, index)``.

    Hashing (numpy's ``SeedSequence``) rather than ``seed + index`` keeps runs with nearby seeds independent (with
    ``seed + index``, the runs seeded 0 and 1 would share all but one sample).

    Raises:
        TypeError, ValueError: ``seed`` or ``index`` is not an integer ``>= 0``.
    """
    seed = check_int("seed", seed, minimum=0)
    index = check_int("index", index, minimum=0)
    words = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & (2**63 - 1)


def item_generators(seed: int, indices: Sequence[int] | range) -> list[torch.Generator]:
    """One CPU generator per item, seeded with :func:`item_seed`.

    CPU generators give the same random numbers on every device (diffusers' ``randn_tensor`` draws on the CPU and
    moves the noise to the model's device), so runs on different device types differ only by arithmetic.
    """
    return [torch.Generator(device="cpu").manual_seed(item_seed(seed, i)) for i in indices]


def split_blocks(num_items: int, block_size: int) -> list[range]:
    """Consecutive index ranges ``[k b, (k + 1) b)`` covering ``[0, num_items)`` (the last one may be shorter)."""
    num_items = check_int("num_items", num_items, minimum=1)
    block_size = check_int("block_size", block_size, minimum=1)
    return [range(i, min(i + block_size, num_items)) for i in range(0, num_items, block_size)]


def model_fingerprint(*modules: torch.nn.Module | None) -> str:
    """SHA-256 of the modules' parameters and buffers (names, dtypes, shapes, bytes): a run's model identity."""
    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------
class ProcessFailed(RuntimeError):
    """Another process of the run failed; the run stopped on every process.

    Args:
        process_index (`int`): the process that failed.
        message (`str`): its error message.
        user_error (`bool`): whether the error was bad input (a ``ValueError``, ``TypeError`` or ``OSError``).
    """

    def __init__(self, process_index: int, message: str, user_error: bool) -> None:
        super().__init__(f"process {process_index}: {message}")
        self.process_index = process_index
        self.message = message
        self.user_error = user_error


def _describe(err: BaseException) -> tuple[str, bool]:
    """``(message, user_error)`` of an exception, for the other processes."""
    if isinstance(err, SystemExit):  # a command that ended with a message
        message = str(err.code)
        return (message[len("error: ") :] if message.startswith("error: ") else message), True
    return (str(err) or type(err).__name__), isinstance(err, USER_ERRORS)


# What a process catches to tell the others before re-raising it (a command's SystemExit included).
_REPORTED = (Exception, SystemExit)


class Processes:
    """The processes of this run: a thin view of accelerate's :class:`~accelerate.PartialState`.

    Without a launcher (``WORLD_SIZE`` unset or 1) this is one process, every collective is a no-op and no global
    state is touched. Under ``torchrun`` / ``accelerate launch`` the process group is formed through accelerate
    (gloo without CUDA or when ``device`` is a CPU, NCCL otherwise), unless accelerate formed it already.

    Args:
        device (`str` or `torch.device`, *optional*): the compute device; ``"cuda"`` means this process's own GPU
            (``cuda:LOCAL_RANK``). Defaults to this process's GPU if there is one, else the CPU.
        timeout (`datetime.timedelta`, defaults to 12 hours): how long a collective waits for the other processes.
    """

    def __init__(
        self, device: str | torch.device | None = None, *, timeout: datetime.timedelta = DEFAULT_TIMEOUT
    ) -> None:
        requested = torch.device(device) if device is not None else None
        self.state = None
        self.num_processes, self.process_index, self.local_process_index = 1, 0, 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            # accelerate forms a gloo (MULTI_CPU) group only when told `cpu`; NCCL needs CUDA.
            cpu = (requested is not None and requested.type == "cpu") or not torch.cuda.is_available()
            self.state = PartialState(cpu=cpu, timeout=timeout)
            self.num_processes = int(self.state.num_processes)
            self.process_index = int(self.state.process_index)
            self.local_process_index = int(self.state.local_process_index)
        if requested is None:
            requested = self.state.device if self.state is not None else None
            requested = requested or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        elif requested.type == "cuda" and requested.index is None and self.num_processes > 1:
            requested = torch.device("cuda", self.local_process_index)
        # accelerate says "cpu:0" under a launcher; a model moved there takes other (differently rounded) CPU
        # kernels than on "cpu", so one process and several would not agree
        self.device = torch.device("cpu") if requested.type == "cpu" else requested

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def all_gather(self, obj: T) -> list[T]:
        """Every process's ``obj`` (picklable), in process order, on every process."""
        if self.num_processes == 1:
            return [obj]
        out: list[Any] = [None] * self.num_processes
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """The main process's ``obj`` on every process."""
        if self.num_processes == 1:
            return obj
        box = [obj if self.is_main_process else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _raise_first(self, statuses: list[tuple[str, bool] | None], own: BaseException | None) -> None:
        failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
        if not failed:
            return
        if own is not None:
            raise own
        rank, (message, user_error) = failed[0]
        raise ProcessFailed(rank, message, user_error)

    @contextlib.contextmanager
    def agree(self) -> Iterator[None]:
        """Run the block on every process, then fail on every process if it failed on any.

        A process whose own block failed re-raises its error; the others raise :class:`ProcessFailed` naming the
        first process that failed. Use it around work that can fail on one process only (loading, file checks),
        so that no process is left waiting at the next collective.
        """
        own: BaseException | None = None
        try:
            yield
        except _REPORTED as err:  # reported to every process, then re-raised
            own = err
        self._raise_first(self.all_gather(None if own is None else _describe(own)), own)

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the main process only, its result broadcast (its failure raised everywhere)."""
        result: Any = None
        own: BaseException | None = None
        if self.is_main_process:
            try:
                result = fn()
            except _REPORTED as err:  # reported to every process, then re-raised
                own = err
        status, result = self.broadcast((None if own is None else _describe(own), result))
        self._raise_first([status], own)
        return result


def run_blocks(
    processes: Processes,
    blocks: Sequence[range],
    compute: Callable[[range], T],
    *,
    skip: Collection[int] = (),
    on_result: Callable[[int, T], None] | None = None,
) -> dict[int, T]:
    """Compute ``compute(block)`` for every block not in ``skip``, split across the processes.

    Round ``j`` gives process ``r`` the block ``todo[j w + r]`` (``w`` processes); after each round every process
    receives every result of the round, and the main process calls ``on_result(block_index, result)`` (to write a
    shard, advance a progress bar) before the next round starts. A failure on any process stops the run on every
    process after the round (see :meth:`Processes.agree`).

    Args:
        processes (:class:`Processes`): the run's processes.
        blocks (`Sequence[range]`): the item ranges (see :func:`split_blocks`).
        compute (`Callable[[range], T]`): the work of one block; its result must be picklable.
        skip (`Collection[int]`, *optional*): indices of blocks already done (e.g. found in a :class:`ShardStore`).
        on_result (`Callable[[int, T], None]`, *optional*): called on the main process for each finished block.

    Returns:
        `dict[int, T]`: the result of every computed block, by block index, on every process.
    """
    skipped = set(skip)
    todo = [k for k in range(len(blocks)) if k not in skipped]
    world, rank = processes.num_processes, processes.process_index
    results: dict[int, T] = {}
    for first in range(0, len(todo), world):
        mine = todo[first + rank] if first + rank < len(todo) else None
        payload: Any = None
        own: BaseException | None = None
        if mine is not None:
            try:
                payload = compute(blocks[mine])
            except _REPORTED as err:  # reported to every process, then re-raised
                own = err
        gathered = processes.all_gather((mine, None if own is None else _describe(own), payload))
        processes._raise_first([status for _, status, _ in gathered], own)
        for index, _, result in gathered:
            if index is not None:
                results[index] = result
        if on_result is not None:
            # the main process writes; a failure there (a full disk) must stop the others too
            finished = [(index, result) for index, _, result in gathered if index is not None]
            processes.on_main(lambda finished=finished: [on_result(index, result) for index, result in finished])
    return results


# ---------------------------------------------------------------------------------------------------------
# Finished blocks on disk
# ---------------------------------------------------------------------------------------------------------
class RunMismatchError(ValueError):
    """A folder holds (part of) a run made with other settings."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _canonical(value: Any) -> Any:
    """A JSON round trip, so that settings compare equal to their reloaded manifest (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class ShardStore:
    """Finished blocks of a run as ``.npz`` files in a folder, with a manifest of the run's settings.

    ``MANIFEST`` (``<name>_run.json``) holds ``settings``: everything the results depend on (model fingerprint,
    sampler, seed, number of items, block size, device type...). A run started on a folder with another manifest
    stops with :class:`RunMismatchError` before writing anything. Shards are named by their item range
    (``<name>_00000000-00000064.npz``), written through a temporary file and an atomic rename, so a killed run leaves
    only whole shards behind.

    Args:
        folder (`str` or `os.PathLike`): where the shards go (created by :meth:`open`).
        settings (`dict`): the run's settings (JSON-serialisable).
        name (`str`, defaults to `"samples"`): file name prefix of the manifest and the shards.
    """

    def __init__(self, folder: str | os.PathLike, settings: dict, name: str = "samples") -> None:
        self.folder = Path(folder)
        self.settings = _canonical(settings)
        self.name = name
        self.manifest = self.folder / f"{name}_run.json"

    def shard_path(self, block: range) -> Path:
        return self.folder / f"{self.name}_{block.start:08d}-{block.stop:08d}.npz"

    def open(self, blocks: Sequence[range]) -> set[int]:
        """Create the folder and manifest, or check an existing manifest; return the indices of finished blocks.

        Raises:
            RunMismatchError: the folder holds a run with other settings (the message names them).
            OSError: the folder cannot be created or written.
        """
        self.check_manifest()
        return {k for k, block in enumerate(blocks) if self.shard_path(block).is_file()}

    def check_manifest(self) -> None:
        """Create the folder and manifest, or check that an existing manifest has these settings (see :meth:`open`)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{str(self.folder)!r} exists and is not a folder")
        if self.manifest.is_file():
            try:
                saved = json.loads(self.manifest.read_text()).get("settings", {})
            except (json.JSONDecodeError, AttributeError) as err:
                raise RunMismatchError(f"{str(self.manifest)!r} is not a run manifest ({err})") from err
            if saved != self.settings:
                keys = sorted(k for k in set(saved) | set(self.settings) if saved.get(k) != self.settings.get(k))
                diff = "; ".join(f"{k}: {saved.get(k)!r} there, {self.settings.get(k)!r} now" for k in keys)
                raise RunMismatchError(
                    f"{str(self.folder)!r} holds a run with other settings ({diff}); its finished shards were left "
                    "untouched: pass the same arguments to resume it, or another folder"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            record = {"settings": self.settings, "created": datetime.datetime.now().isoformat(timespec="seconds")}
            atomic_write_bytes(self.manifest, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        if not os.access(self.folder, os.W_OK):
            raise PermissionError(f"{str(self.folder)!r} is not writable")

    def write(self, block: range, arrays: dict[str, np.ndarray]) -> Path:
        """Save one block's arrays (atomically)."""
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = self.shard_path(block)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def read(self, block: range) -> dict[str, np.ndarray]:
        """One finished block's arrays.

        Raises:
            OSError: the shard is unreadable (e.g. damaged outside this program).
        """
        path = self.shard_path(block)
        try:
            with np.load(path) as data:
                return {key: data[key] for key in data.files}
        except (ValueError, EOFError, KeyError) as err:
            raise OSError(f"cannot read the shard {str(path)!r} ({err}); delete it to recompute it") from err
