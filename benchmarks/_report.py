"""What every benchmark's JSON report shares: paths inside the repository are written relative to it, so a report
names the files it used without the folders of the machine that ran it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def portable(value: Any) -> Any:
    """``value`` with every absolute path under the repository (in any nested dict / list) made repo-relative."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item) for item in value]
    if isinstance(value, (str, os.PathLike)) and os.path.isabs(value):
        path = Path(value).resolve()
        if path.is_relative_to(REPO):
            return path.relative_to(REPO).as_posix()
    return value


def write_report(path: str | os.PathLike, report: dict | list, **json_kwargs: Any) -> None:
    """Write ``report`` as indented JSON at ``path`` (parents created), repository paths made relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(portable(report), indent=2, **json_kwargs) + "\n")
