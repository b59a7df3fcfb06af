"""Fail fast through the real daemon, and the cost of reading the plugin list.

Setup: PLUGINS (1000) ready plugins served by one responder process, plus one plugin
``hung`` that is activated, then hangs (accepts, reads, never answers); the daemon runs
with ``probe.timeout = 2``, ``probe.failure_threshold = 1`` and a forced probe makes
``hung`` unhealthy.

1. N (200) ``GET /v1/plugins/hung/volumes`` through volplugd, each must answer
   ``409 plugin_not_ready``: p50/p99 -- beside ONE direct ``POST /VolumeDriver.List``
   to the hung plugin with a Podman-like 5 s client timeout, in the same run, and
   ``GET /v1/health`` (a tiny answer from the same socket: the floor). Goal p99 <= 5 ms.
2. ``GET /v1/plugins`` (1001 records) and ``GET /v1/health``: sequential (one keep-alive
   client, the two interleaved so machine load hits both alike) and with 8 concurrent
   keep-alive clients: p50/p99 and requests/s. Goal: p99 <= 10 ms.
Usage: .venv/bin/python bench/failfast.py [--quick] [--plugins N] [--profile FILE]
Runs on: the main thread; the 8-client phase adds one thread per client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import _common as c

NOT_READY_GOAL = 0.005
LIST_GOAL = 0.010
PODMAN_TIMEOUT = 5.0
CONFIG = "[probe]\ntimeout = 2.0\nfailure_threshold = 1\n"
# What Podman sends for `podman volume ls` (shared/peers/README.md)
PODMAN_LIST = (b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\n"
               b"User-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n"
               b"Content-Type: application/vnd.docker.plugins.v1.1+json\r\n\r\n")


def timed_get(client: c.RawClient, target: str, want: int) -> float:
    start = time.perf_counter()
    status, body = client.get(target)
    took = time.perf_counter() - start
    if status != want:
        raise RuntimeError(f"GET {target}: {status} {body[:200]!r}, expected {want}")
    return took


def direct_call(path: str) -> tuple[float, str]:
    """One Podman-like call to the hung plugin: seconds until the client gives up."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PODMAN_TIMEOUT)
    start = time.perf_counter()
    try:
        sock.connect(path)
        sock.sendall(PODMAN_LIST)
        got = sock.recv(65536)
        outcome = f"answered {got[:40]!r}"
    except TimeoutError:
        outcome = "timed out"
    finally:
        sock.close()
    return time.perf_counter() - start, outcome


def make_hung(plugins: Path, responder: c.Responder, daemon: c.Daemon, count: int) -> None:
    """Bind ``hung``, let it become ready, make it hang, force a probe, wait unhealthy."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(plugins / "hung.sock"))
    sock.listen(128)
    responder.adopt("hung", sock)
    sock.close()
    daemon.wait_plugins_ready(count + 1, timeout=60)
    responder.hang("hung")
    with contextlib.suppress(TimeoutError):  # the answer may outlast our read timeout
        daemon.client.request("POST", "/v1/plugins/hung/probe")
    deadline = time.monotonic() + 30
    while True:
        status, body = daemon.client.get("/v1/plugins/hung")
        if status == 200 and json.loads(body)["state"] == "unhealthy":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"hung never turned unhealthy: {status} {body[:300]!r}")
        time.sleep(0.05)


def fail_fast(daemon: c.Daemon, plugins: Path, n: int) -> tuple[list[float], list[float], bool]:
    client = c.RawClient(daemon.socket)
    not_ready: list[float] = []
    health: list[float] = []
    status, body = client.get("/v1/plugins/hung/volumes")
    code = json.loads(body).get("error", {}).get("code") if status == 409 else None
    if code != "plugin_not_ready":
        raise RuntimeError(f"expected 409 plugin_not_ready, got {status} {body[:300]!r}")
    for _ in range(n):  # interleaved: the same machine load for both
        not_ready.append(timed_get(client, "/v1/plugins/hung/volumes", 409))
        health.append(timed_get(client, "/v1/health", 200))
    client.close()
    direct, outcome = direct_call(str(plugins / "hung.sock"))
    p99 = c.percentile(not_ready, 99)
    rows = [
        ["GET /v1/plugins/hung/volumes → 409", c.ms(c.percentile(not_ready, 50)), c.ms(p99),
         c.ms(max(not_ready)), f"x{direct / p99:,.0f} faster than direct"],
        ["GET /v1/health (floor, same socket)", c.ms(c.percentile(health, 50)),
         c.ms(c.percentile(health, 99)), c.ms(max(health)),
         f"409 p50 = x{c.percentile(not_ready, 50) / c.percentile(health, 50):.1f} floor"],
        [f"direct List to hung, {PODMAN_TIMEOUT:.0f} s timeout", c.ms(direct), "", "", outcome],
    ]
    print(c.table(rows, [f"ms (n={n})", "p50", "p99", "max", "ratio"]))
    ok = p99 <= NOT_READY_GOAL
    print(f"  goal p99 409 <= {NOT_READY_GOAL * 1e3:.0f} ms: {c.verdict(ok)}")
    return not_ready, health, ok


@dataclass
class Figures:
    latencies: list[float]
    seconds: float
    body_bytes: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def sequential(socket_path: str, seconds: float) -> dict[str, Figures]:
    """Alternate the two targets on one keep-alive connection each, for ``seconds``."""
    targets = ("/v1/plugins", "/v1/health")
    clients = {t: c.RawClient(socket_path) for t in targets}
    lat: dict[str, list[float]] = {t: [] for t in targets}
    size = dict.fromkeys(targets, 0)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for target in targets:
            start = time.perf_counter()
            status, body = clients[target].get(target)
            lat[target].append(time.perf_counter() - start)
            size[target] = len(body)
            if status != 200:
                raise RuntimeError(f"GET {target}: {status}")
    for client in clients.values():
        client.close()
    return {t: Figures(lat[t], sum(lat[t]), size[t]) for t in targets}


def concurrent(socket_path: str, target: str, clients: int, seconds: float) -> Figures:
    """``clients`` threads, each on its own keep-alive connection, for ``seconds``."""
    results: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    size = [0]
    start_line = threading.Barrier(clients + 1)

    def work(out: list[float]) -> None:
        client = c.RawClient(socket_path)
        try:
            start_line.wait()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                status, body = client.get(target)
                out.append(time.perf_counter() - t0)
                size[0] = len(body)
                if status != 200:
                    errors.append(f"{status}")
                    return
        except Exception as err:
            errors.append(repr(err))
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"concurrent GET {target}: {errors[:3]}")
    return Figures([x for r in results for x in r], time.monotonic() - began, size[0])


def listing(daemon: c.Daemon, seconds: float, clients: int) -> bool:
    seq = sequential(daemon.socket, seconds)
    conc = {t: concurrent(daemon.socket, t, clients, seconds)
            for t in ("/v1/plugins", "/v1/health")}
    rows = []
    for mode, figures in (("sequential", seq), (f"{clients} clients", conc)):
        for target in ("/v1/plugins", "/v1/health"):
            f = figures[target]
            rows.append([f"{mode}: GET {target} ({f.body_bytes / 1e3:.1f} KB)",
                         c.ms(c.percentile(f.latencies, 50)),
                         c.ms(c.percentile(f.latencies, 99)), f"{f.rate:,.0f}",
                         len(f.latencies)])
    print(c.table(rows, ["ms", "p50", "p99", "req/s", "n"]))
    worst = max(c.percentile(seq["/v1/plugins"].latencies, 99),
                c.percentile(conc["/v1/plugins"].latencies, 99))
    for mode, figures in (("sequential", seq), (f"{clients} clients", conc)):
        ratio = figures["/v1/health"].rate / figures["/v1/plugins"].rate
        print(f"  {mode}: the list costs x{ratio:.1f} a health request (req/s ratio)")
    ok = worst <= LIST_GOAL
    print(f"  goal p99 GET /v1/plugins <= {LIST_GOAL * 1e3:.0f} ms (worst of both modes "
          f"{worst * 1e3:.2f} ms): {c.verdict(ok)}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 20 s)")
    parser.add_argument("--plugins", type=int)
    parser.add_argument("--requests", type=int, help="409 requests (default 200)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="py-spy the daemon during the list phase; raw stacks to FILE")
    args = parser.parse_args()
    c.exit_cleanly_on_sigterm()
    count = args.plugins or (200 if args.quick else 1000)
    seconds = 1.0 if args.quick else 4.0
    c.fd_limit_for(2 * count + 64)
    print(f"failfast: {count} ready plugins + 1 hung; {c.machine_line()}")
    with contextlib.ExitStack() as stack:
        setup = c.Setup.start(stack, count, CONFIG, prefix="vpf")
        plugins, responder, daemon = setup.plugins, setup.responder, setup.daemon
        make_hung(plugins, responder, daemon, count)
        print("1. a volume call to an unhealthy (hung) plugin")
        _, _, first = fail_fast(daemon, plugins, args.requests or 200)
        print(f"2. the plugin list with {count + 1} plugins")
        profiler = None if args.profile is None else c.Profiler(daemon.pid, args.profile)
        second = listing(daemon, seconds, args.clients)
        if profiler is not None:
            profiler.stop()
    print(f"failfast: {c.verdict(first and second)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
