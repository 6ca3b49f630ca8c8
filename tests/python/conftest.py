"""Fixtures for the Python tests: a real `recap serve` on a free loopback port, with a temporary
data directory and an API key (`recap`) or without keys (`open_recap`), stopped (SIGTERM, then
waited for) at the end.

The binary is `$RECAP_BIN`, or `target/debug/recap` (run `cargo build` first; `.ci/run` builds
it and sets `RECAP_BIN`).
"""

from __future__ import annotations

import contextlib
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
        return {"X-API-Key": self.api_key} if self.api_key else {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recap_binary() -> Path:
    binary = Path(os.environ.get("RECAP_BIN", ROOT / "target" / "debug" / "recap"))
    if not binary.is_file():
        pytest.exit(f"{binary} does not exist: run `cargo build` or set RECAP_BIN", returncode=2)
    return binary


@contextlib.contextmanager
def running_recap(
    keys: bool,
    port: int | None = None,
    data_dir: Path | None = None,
    extra_keys: str = "",
    anomalies: bool = True,
):
    """Starts `recap serve` on `port` (default a free one) on loopback with `data_dir` (default
    a temporary one; and, with `keys`, a keys file holding API_KEY with the admin scope, then
    `extra_keys`, more `[[keys]]` tables; anomaly detection on unless `anomalies` is false); stops
    it (SIGTERM, then waited for, killed by its pid if it does not exit) when the block ends."""
    with tempfile.TemporaryDirectory(prefix="recap-pytest-") as tmp:
        tmp = Path(tmp)
        data_dir = data_dir or tmp / "data"
        command = [
            str(recap_binary()),
            "serve",
            "--addr",
            f"127.0.0.1:{port or free_port()}",
            "--data",
            str(data_dir),
            "--anomalies",
            "on" if anomalies else "off",
        ]
        if keys:
            keys_file = tmp / "keys.toml"
            keys_file.write_text(
                f'[[keys]]\nname = "pytest"\nkey = "{API_KEY}"\nscopes = ["admin"]\n'
                + extra_keys
            )
            command += ["--keys", str(keys_file)]
        url = f"http://{command[3]}"
        log = open(tmp / "recap.log", "wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
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
            yield Recap(url=url, api_key=API_KEY if keys else "", data_dir=data_dir)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


@pytest.fixture(scope="session")
def recap():
    """A server with an API key (every request but /healthz and the web view's pages needs it)."""
    with running_recap(keys=True) as server:
        yield server


@pytest.fixture(scope="session")
def open_recap():
    """A server without keys (loopback only), as `recap serve` runs on a developer's machine."""
    with running_recap(keys=False) as server:
        yield server
