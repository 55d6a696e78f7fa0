"""The ``sde-diffusers`` command line: one sub-command per module in :mod:`sde_diffusers.commands`.

Each command module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. A user's
mistake (a ``ValueError``, ``TypeError`` or ``OSError`` such as a missing folder or a damaged weights file, or a
command ending with a message) prints one line, ``error: ...``, and exits with status 2, like argparse's own
errors; set ``SDE_DIFFUSERS_TRACEBACK=1`` to see the traceback instead. Under ``torchrun`` / ``accelerate launch``
only the main process prints it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import commands

#: Exit status of a user's mistake (argparse uses the same).
USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sde-diffusers",
        description=__doc__.splitlines()[0],
        epilog="Set SDE_DIFFUSERS_TRACEBACK=1 to see tracebacks instead of one-line errors.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not a command
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _user_error(err: BaseException) -> bool:
    from .distributed import USER_ERRORS, ProcessFailed

    if isinstance(err, ProcessFailed):
        return err.user_error
    if isinstance(err, USER_ERRORS):
        return True
    # safetensors reports a damaged file with its own exception type
    return type(err).__name__ == "SafetensorError"


def _one_line(message: str) -> str:
    text = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    prefix = "error:"
    return text[len(prefix) :].lstrip() if text.lower().startswith(prefix) else text


def _report(message: str) -> None:
    # under a launcher every process meets the same error; the main process speaks for them
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; return its exit status (2 and a one-line message for a user's mistake)."""
    args = build_parser().parse_args(argv)
    if not os.environ.get("SDE_DIFFUSERS_TRACEBACK"):
        # loading bars of Diffusers would otherwise surround a one-line error
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    try:
        return int(args._run(args) or 0)
    except SystemExit as err:
        if isinstance(err.code, str) and not os.environ.get("SDE_DIFFUSERS_TRACEBACK"):  # ended with a message
            _report(err.code)
            return USAGE_ERROR
        raise
    except Exception as err:
        if os.environ.get("SDE_DIFFUSERS_TRACEBACK") or not _user_error(err):
            raise
        _report(str(err) or type(err).__name__)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
