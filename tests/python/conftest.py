"""Fixtures for the Python compatibility tests: a real `recap serve` on a free loopback port,
with a temporary data directory and an API key, stopped (SIGTERM, then waited for) at the end.

The binary is `$RECAP_BIN`, or `target/debug/recap` (run `cargo build` first; `.ci/run` builds
it and sets `RECAP_BIN`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "pytest-key-0123456789abcdef"
STARTUP_SECONDS = 60


@dataclass
class Recap:
    """A running recap server."""

    url: str
    api_key: str
    data_dir: Path

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recap_binary() -> Path:
    binary = Path(os.environ.get("RECAP_BIN", ROOT / "target" / "debug" / "recap"))
    if not binary.is_file():
        pytest.exit(f"{binary} does not exist: run `cargo build` or set RECAP_BIN", returncode=2)
    return binary


@pytest.fixture(scope="session")
def recap():
    with tempfile.TemporaryDirectory(prefix="recap-pytest-") as tmp:
        tmp = Path(tmp)
        keys = tmp / "keys.toml"
        keys.write_text(
            f'[[keys]]\nname = "pytest"\nkey = "{API_KEY}"\nscopes = ["admin"]\n'
        )
        port = free_port()
        log = open(tmp / "recap.log", "wb")
        process = subprocess.Popen(
            [
                str(recap_binary()),
                "serve",
                "--addr",
                f"127.0.0.1:{port}",
                "--data",
                str(tmp / "data"),
                "--keys",
                str(keys),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        "recap exited early:\n" + (tmp / "recap.log").read_text()
                    )
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("recap did not answer /healthz in time")
                time.sleep(0.05)
            yield Recap(url=url, api_key=API_KEY, data_dir=tmp / "data")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
