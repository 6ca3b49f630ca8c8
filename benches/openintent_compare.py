"""recap vs the OpenIntent reference server, same load on the same routes.

Starts both servers on loopback, each with a fresh data directory and an API key:

- recap: `recap serve` (the binary from --recap-bin, default target/release/recap), redb file;
- the reference server: `python -m openintent.server` from `openintent[server]==0.17.0`
  (the interpreter from --openintent-python), its SQLite default in a temp dir.

On each it creates an intent (`POST /api/v1/intents`), then runs, one server at a time, two
phases of `--seconds` each (after a short warm-up) with `--concurrency` requests in flight:

1. `POST /api/v1/intents/{id}/events`: a `tool_call_failed` event as `log_tool_call_failed`
   sends it, with a fresh `tool_id` and arguments per request (so recap collapses nothing);
2. `GET /api/v1/intents/{id}/events?limit=100`: the client's default `get_events` page, over the
   events phase 1 wrote.

and prints events (requests) per second, p50 and p99 latency, and the ratio recap / reference.
Both servers are stopped at the end, whatever happens. The load generator is one asyncio
process with httpx; its own CPU use is printed too, since on a small machine it shares the cores
with the server it measures (a "client-bound" figure is a floor, not recap's ceiling).

Run (after `cargo build --release`; the reference server needs its extra):

    python3 -m venv /tmp/oi-bench && /tmp/oi-bench/bin/pip install 'openintent[server]==0.17.0' httpx==0.28.1
    /tmp/oi-bench/bin/python benches/openintent_compare.py [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-key-0123456789abcdef"
WARMUP_SECONDS = 1.0
STARTUP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_ready(server: Server, probe: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{server.log.read_text()}")
        try:
            if httpx.get(server.url + probe, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not come up; see {server.log}")


def start_recap(binary: Path, tmp: Path) -> Server:
    keys = tmp / "keys.toml"
    keys.write_text(f'[[keys]]\nname = "bench"\nkey = "{API_KEY}"\nscopes = ["admin"]\n')
    port, log = free_port(), tmp / "recap.log"
    process = subprocess.Popen(
        [str(binary), "serve", "--addr", f"127.0.0.1:{port}", "--data", str(tmp / "recap-data"),
         "--keys", str(keys)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    server = Server("recap", f"http://127.0.0.1:{port}", process, log)
    wait_ready(server, "/healthz")
    return server


def start_reference(python: str, tmp: Path) -> Server:
    port, log = free_port(), tmp / "openintent.log"
    process = subprocess.Popen(
        [python, "-m", "openintent.server", "--host", "127.0.0.1", "--port", str(port),
         "--database-url", f"sqlite:///{tmp / 'openintent.db'}", "--api-keys", API_KEY,
         "--log-level", "warning"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp,
    )
    server = Server("openintent", f"http://127.0.0.1:{port}", process, log)
    wait_ready(server, "/.well-known/openintent.json")
    return server


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0

    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(p) - 1] * 1000


async def run_phase(client: httpx.AsyncClient, make_request, concurrency: int, seconds: float) -> Phase:
    """`concurrency` workers issue requests back to back; only those that start after the
    warm-up and before the end are counted."""
    phase = Phase()
    start = time.perf_counter()
    measure_from = start + WARMUP_SECONDS
    stop_at = measure_from + seconds
    counter = iter(range(10**12))

    async def worker() -> None:
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            response = await make_request(client, next(counter))
            took = time.perf_counter() - began
            if began >= measure_from:
                if response.status_code >= 400:
                    phase.errors += 1
                else:
                    phase.latencies.append(took)

    cpu_before = time.process_time()
    await asyncio.sleep(0)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = seconds
    phase.client_cpu = (time.process_time() - cpu_before) / (seconds + WARMUP_SECONDS)
    return phase


async def bench(server: Server, concurrency: int, seconds: float) -> dict[str, Phase]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"X-API-Key": API_KEY, "X-Agent-ID": "bench-agent", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, limits=limits, timeout=60) as client:
        created = await client.post("/api/v1/intents", json={"title": "bench", "description": "",
                                                              "constraints": {}, "state": {},
                                                              "created_by": "bench-agent"})
        created.raise_for_status()
        intent = created.json()["id"]

        async def post(client: httpx.AsyncClient, n: int) -> httpx.Response:
            return await client.post(f"/api/v1/intents/{intent}/events", json={
                "event_type": "tool_call_failed",
                "actor": "bench-agent",
                "payload": {"tool_name": "search", "tool_id": f"call-{n}",
                            "arguments": {"query": f"redb durability {n}"},
                            "error": "timed out after 30s", "duration_ms": 30000},
            })

        async def get(client: httpx.AsyncClient, n: int) -> httpx.Response:
            return await client.get(f"/api/v1/intents/{intent}/events", params={"limit": 100})

        return {
            "POST /api/v1/intents/{id}/events": await run_phase(client, post, concurrency, seconds),
            "GET /api/v1/intents/{id}/events?limit=100": await run_phase(client, get, concurrency, seconds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description="recap vs the OpenIntent reference server")
    parser.add_argument("--recap-bin", type=Path, default=ROOT / "target" / "release" / "recap")
    parser.add_argument("--openintent-python", default=sys.executable,
                        help="a Python with openintent[server]==0.17.0 installed")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if not args.recap_bin.is_file():
        sys.exit(f"{args.recap_bin} does not exist: run `cargo build --release` or pass --recap-bin")

    results: dict[str, dict[str, Phase]] = {}
    with tempfile.TemporaryDirectory(prefix="recap-oi-bench-") as tmp:
        tmp = Path(tmp)
        for name, start in [
            ("recap", lambda: start_recap(args.recap_bin, tmp)),
            ("openintent", lambda: start_reference(args.openintent_python, tmp)),
        ]:
            server = start()
            try:
                results[name] = asyncio.run(bench(server, args.concurrency, args.seconds))
            finally:
                server.stop()

    print(f"\nrecap vs openintent 0.17.0 reference server: loopback, {args.concurrency} requests in "
          f"flight, {args.seconds:g} s per phase after {WARMUP_SECONDS:g} s warm-up, "
          f"{os.cpu_count()} cores shared with the load generator\n")
    header = f"{'route':<44} {'server':<11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'client CPU':>10}"
    print(header)
    print("-" * len(header))
    for route in results["recap"]:
        for name in ("recap", "openintent"):
            phase = results[name][route]
            print(f"{route:<44} {name:<11} {phase.rate():>9.0f} {phase.percentile(50):>8.2f} "
                  f"{phase.percentile(99):>8.2f} {phase.errors:>6} {phase.client_cpu:>9.0%}")
    print()
    for route in results["recap"]:
        ours, theirs = results["recap"][route], results["openintent"][route]
        ratio = ours.rate() / theirs.rate() if theirs.rate() else float("inf")
        print(f"ratio recap/openintent, {route}: {ratio:.1f}x events/s, "
              f"p99 {theirs.percentile(99) / ours.percentile(99):.1f}x lower")


if __name__ == "__main__":
    main()
