"""Session setup shared by every test file. Keep it minimal: fixtures for one topic live in that topic's file.

The block below runs when pytest imports this file, before any test module can import `huggingface_hub` (which
`diffusers` imports): `huggingface_hub` and `diffusers` read these variables once, at import time. It points the
Hub client at the project's local test server (`tests/hub_server.py`) on a port reserved now, and keeps every
cache and token inside a temporary `HF_HOME`, so no test reads the developer's login or reaches huggingface.co.

Fixtures provided here:

* `local_hub` (session): a `LocalHub(url, token)` named tuple for the running local Hub server (started on first
  use). `url` equals `HF_ENDPOINT`, so `huggingface_hub` / `diffusers` calls reach it without an `endpoint`
  argument; `token` is the only token it accepts and is also exported as `HF_TOKEN` (delete the variable with
  `monkeypatch.delenv("HF_TOKEN")` to act anonymously).
* `local_hub_server` (session): the `hub_server.HubServer` object itself, for assertions on what it stored or was
  asked (`file_entry`, `repo_exists`, `write_requests`).
* `tmp_hf_home` (session): the temporary `HF_HOME` (a `pathlib.Path`); its `hub/` is the default download cache.
  Pass `cache_dir=tmp_path / "cache"` to a download to start from an empty cache instead.
* `one_thread` (function): torch on one CPU thread for the test, restored after it (bitwise comparisons with
  `OMP_NUM_THREADS=1` subprocesses; many small ops that thread hand-offs only slow down).
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

# `--import-mode=importlib` does not put this folder on sys.path; the server module lives next to this file.
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hub_server import HubServer, reserve_socket  # noqa: E402

LOCAL_HUB_TOKEN = "hf_sde_diffusers_local_test_token"

if "huggingface_hub" in sys.modules:  # pragma: no cover - depends on what ran before this file
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py could point it at the local test Hub; "
        "remove the plugin or import that loads it first."
    )

_HF_HOME = tempfile.mkdtemp(prefix="sde-diffusers-test-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
_HUB_SOCKET = reserve_socket("127.0.0.1", 0)
# Variables that would send files or tokens elsewhere than the temporary home or the local server.
for _name in (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_MODULES_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
    "HF_HUB_OFFLINE",
    "DIFFUSERS_DISABLE_REMOTE_CODE",
):
    os.environ.pop(_name, None)
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{_HUB_SOCKET.getsockname()[1]}",
    HF_HOME=_HF_HOME,
    HF_TOKEN=LOCAL_HUB_TOKEN,
    HF_HUB_DISABLE_XET="1",  # the local server speaks Git-LFS, not Xet
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)

import pytest  # noqa: E402 - after the environment block on purpose


class LocalHub(NamedTuple):
    """Address and access token of the local test Hub."""

    url: str
    token: str


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tmp_hf_home() -> Path:
    """The temporary `HF_HOME` that this test session uses."""
    return Path(_HF_HOME)


@pytest.fixture(scope="session")
def local_hub_server(tmp_path_factory):
    """The local Hub server (`hub_server.HubServer`), listening on the port `HF_ENDPOINT` names."""
    server = HubServer(tmp_path_factory.mktemp("local-hub"), token=LOCAL_HUB_TOKEN, sock=_HUB_SOCKET)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_hub(local_hub_server) -> LocalHub:
    """`(url, token)` of the running local Hub server."""
    return LocalHub(local_hub_server.url, local_hub_server.token)
