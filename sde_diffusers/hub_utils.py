"""Publishing to the Hugging Face Hub: pushing saved pipelines and writing their model cards.

* [`push_pipeline_to_hub`] uploads a folder written by `SDEDiffusionPipeline.save_pretrained` (create the repo if
  needed, then one commit), after checking that a token is available.
* [`render_model_card`] fills a template of `model_cards/` (Markdown with YAML front matter and `${field}`
  placeholders); [`save_model_card`] writes the result as the folder's `README.md`.

The Hub address comes from `HF_ENDPOINT` as everywhere in `huggingface_hub`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MissingHubTokenError",
    "resolve_hub_token",
    "check_push_arguments",
    "push_pipeline_to_hub",
    "list_model_card_templates",
    "render_model_card",
    "save_model_card",
]

_PIPELINE_INDEX = "model_index.json"
_TEMPLATE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_NOT_MEASURED = "not measured"


class MissingHubTokenError(ValueError):
    """No Hugging Face access token was passed, found in `HF_TOKEN` or saved by `hf auth login`."""


def resolve_hub_token(token: str | None = None) -> str:
    """Return the access token to write to the Hub with, or raise before any request is made.

    Args:
        token (`str`, *optional*): an explicit token; takes precedence.

    Returns:
        `str`: `token`, else `HF_TOKEN`, else the token saved by `hf auth login`.

    Raises:
        `MissingHubTokenError`: none of the three is available.
    """
    if token is not None and not isinstance(token, str):
        raise TypeError(f"`token` must be a string or None, got {type(token).__name__}.")
    if token is not None and not token.strip():
        raise ValueError("`token` is an empty string; pass a Hugging Face access token or None.")
    from huggingface_hub import get_token

    resolved = token or get_token()
    if not resolved:
        raise MissingHubTokenError(
            "Pushing to the Hugging Face Hub needs an access token with write permission: pass `token=...`, set "
            "the HF_TOKEN environment variable, or run `hf auth login`. Nothing was uploaded."
        )
    return resolved


def check_push_arguments(
    repo_id: str, token: str | None = None, private: bool | None = False, commit_message: str = "Upload"
) -> str:
    """Validate the arguments of a push and return the token to use, before anything is written or sent.

    Args:
        repo_id (`str`): `"name"` or `"namespace/name"`.
        token (`str`, *optional*): see [`resolve_hub_token`].
        private (`bool`, *optional*): visibility of a new repo (`None`: the Hub's default, public).
        commit_message (`str`): non-empty commit message.

    Returns:
        `str`: the resolved token.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise TypeError(f"`repo_id` must be a string, got {type(repo_id).__name__}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"`repo_id` {repo_id!r} is not a valid Hub repo id ('name' or 'namespace/name').") from err
    if private is not None and not isinstance(private, bool):
        raise TypeError(f"`private` must be a bool or None, got {type(private).__name__}.")
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise ValueError("`commit_message` must be a non-empty string.")
    return resolve_hub_token(token)


def push_pipeline_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = False,
    commit_message: str = "Upload sde-diffusers pipeline",
    create_pr: bool = False,
):
    """Upload a saved pipeline folder to a Hub model repo (created if it does not exist), as one commit.

    The folder is uploaded as it is: save it with `save_pretrained` (shim layout) and add the model card
    (`README.md`, see [`save_model_card`]) and any sample images first. Files unchanged on the Hub are skipped.

    Args:
        folder (`str` or `os.PathLike`): folder holding `model_index.json`.
        repo_id (`str`): `"name"` (in the token owner's namespace) or `"namespace/name"`.
        token (`str`, *optional*): access token; defaults to `HF_TOKEN` or the saved login.
        private (`bool`, defaults to `False`): create the repo private (an existing repo keeps its visibility).
        commit_message (`str`): message of the commit.
        create_pr (`bool`, defaults to `False`): open a pull request instead of committing to `main`.

    Returns:
        `huggingface_hub.CommitInfo`: the commit (`.commit_url`, `.oid`, `.repo_url.repo_id`).

    Raises:
        `MissingHubTokenError`: no token is available (checked before any request).
        `ValueError`: `folder` is not a saved pipeline or `repo_id` is malformed.
    """
    from huggingface_hub import create_repo, upload_folder

    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"`folder` must be a str or os.PathLike, got {type(folder).__name__}.")
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, _PIPELINE_INDEX)):
        raise ValueError(f"`folder` {folder!r} is not a saved pipeline: it has no {_PIPELINE_INDEX}.")
    token = check_push_arguments(repo_id, token=token, private=private, commit_message=commit_message)

    repo_url = create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
    return upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=folder,
        commit_message=commit_message,
        token=token,
        repo_type="model",
        create_pr=create_pr,
        ignore_patterns=["**/__pycache__/**", "*.pyc"],
    )


def _template_dirs() -> list[Any]:
    """Where templates live: the installed `sde_diffusers.model_cards` package, else the source checkout."""
    dirs: list[Any] = []
    try:
        dirs.append(importlib.resources.files("sde_diffusers.model_cards"))
    except ModuleNotFoundError:
        pass
    # A source checkout (editable install before `sde_diffusers.model_cards` was mapped): `model_cards/` sits
    # next to `pyproject.toml`. The check keeps an installed copy from picking up an unrelated folder.
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "model_cards").is_dir():
        dirs.append(root / "model_cards")
    return dirs


def list_model_card_templates() -> list[str]:
    """Names of the available model card templates (e.g. `"score_sde"`), sorted."""
    names = set()
    for directory in _template_dirs():
        names.update(item.name[:-3] for item in directory.iterdir() if item.name.endswith(".md") and item.is_file())
    return sorted(names)


def _template_text(template_name: str) -> str:
    if not isinstance(template_name, str):
        raise TypeError(f"`template_name` must be a string, got {type(template_name).__name__}.")
    name = template_name[:-3] if template_name.endswith(".md") else template_name
    if _TEMPLATE_NAME_RE.match(name):
        for directory in _template_dirs():
            candidate = directory / f"{name}.md"
            if candidate.is_file():
                return candidate.read_text(encoding="utf-8")
    raise ValueError(f"Unknown model card template {template_name!r}; available: {list_model_card_templates()}.")


def _as_text(value: Any) -> str:
    if value is None:
        return _NOT_MEASURED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping):
        return json.dumps(value, indent=2, default=str)
    if isinstance(value, (list, tuple)):
        return ", ".join(_as_text(v) for v in value)
    return str(value)


def _as_yaml(value: Any) -> str:
    # A JSON scalar is a valid YAML flow scalar: quoting keeps `:` or `#` in a value from changing the metadata.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _as_text(value)
    return json.dumps(_as_text(value))


def _placeholders(text: str) -> set[str]:
    names = set()
    for match in string.Template.pattern.finditer(text):
        if match.group("invalid") is not None:
            line = text[: match.start()].count("\n") + 1
            raise ValueError(f"Model card template has an invalid '$' placeholder on line {line}.")
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


def render_model_card(template_name: str, **fields: Any) -> str:
    """Fill a model card template.

    Every `${field}` of the template must be given, and nothing else. Values are rendered as text: `None` as
    "not measured" (e.g. `bits_per_dim` when it was not evaluated), floats with 6 significant digits, mappings as
    indented JSON (e.g. the training config), lists comma-separated. In the YAML front matter values are quoted.

    Args:
        template_name (`str`): a name from [`list_model_card_templates`], e.g. `"score_sde"`.
        fields: the template's fields. `score_sde` takes `model_name`, `repo_id`, `pipeline_class`,
            `architecture`, `sde`, `dataset`, `training_config`, `steps`, `final_loss`, `bits_per_dim`,
            `sample_grid` (path of the image inside the repo) and `license`; `soft_diffusion` takes
            `corruption` instead of `sde`.

    Returns:
        `str`: the model card (Markdown with YAML metadata), ready to save as `README.md`.

    Raises:
        `ValueError`: unknown template, missing or unexpected fields, or metadata that does not parse.
    """
    from huggingface_hub import ModelCard

    template = _template_text(template_name)
    front, body = "", template
    if template.startswith("---\n"):
        end = template.find("\n---\n", 3)
        if end < 0:
            raise ValueError(f"Model card template {template_name!r} does not close its YAML front matter.")
        front, body = template[: end + 5], template[end + 5 :]
    expected = _placeholders(front) | _placeholders(body)
    missing, unexpected = sorted(expected - set(fields)), sorted(set(fields) - expected)
    if missing or unexpected:
        raise ValueError(
            f"Model card template {template_name!r} takes the fields {sorted(expected)}; "
            f"missing: {missing}, unexpected: {unexpected}."
        )
    card = string.Template(front).substitute({k: _as_yaml(v) for k, v in fields.items()}) + string.Template(
        body
    ).substitute({k: _as_text(v) for k, v in fields.items()})
    try:
        ModelCard(card, ignore_metadata_errors=False)
    except Exception as err:  # the YAML parser raises several types
        raise ValueError(f"The rendered model card has invalid metadata: {err}") from err
    return card


def save_model_card(folder: str | os.PathLike, template_name: str, **fields: Any) -> Path:
    """Render a model card (see [`render_model_card`]) and write it as `folder/README.md`.

    Args:
        folder (`str` or `os.PathLike`): an existing folder, typically a saved pipeline.
        template_name (`str`): the template, e.g. `"score_sde"`.
        fields: the template's fields.

    Returns:
        `Path`: the written `README.md`.
    """
    if not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(folder):
        raise ValueError(f"`folder` must be an existing folder, got {folder!r}.")
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(template_name, **fields), encoding="utf-8")
    return path
