"""What the gateway costs on a healthy plugin, and how fast it refuses for a hung one.

Setup: PLUGINS (10) ready plugins served by one responder process (tests/fakeplugin/many.py),
plus ``hung`` (activated, then it hangs: reads, never answers; a forced probe makes it
unhealthy); the real daemon runs with ``[gateway] enabled``.

1. Healthy: N (2000) Podman-like ``POST /VolumeDriver.List`` (empty body) on one
   keep-alive connection to the plugin's own socket and N on one to its gateway socket,
   interleaved (the same machine load for both): p50/p99 of each and what the gateway
   adds. Goal: <= 0.3 ms added at p50.
2. Not ready: N ``POST /VolumeDriver.Create {"Name":"v1"}`` to ``hung``'s gateway socket,
   each must be ``500 {"Err": "volplugd: plugin hung is unhealthy: …"}``: p50/p99, beside
   one direct call to the hung plugin with Podman's 5 s client timeout (same run; not
   with --quick) and Docker's and Podman's own measured waits. Goal: p99 <= 2 ms.
Usage: .venv/bin/python bench/gateway.py [--quick] [--requests N] [--plugins N]
Runs on: the main thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import _common as c
from failfast import PODMAN_TIMEOUT, direct_call, make_hung

ADDED_GOAL = 0.0003
REFUSAL_GOAL = 0.002
CONFIG = "[probe]\ntimeout = 2.0\nfailure_threshold = 1\n[gateway]\nenabled = true\n"
# Measured with the real peers (docs/docker.md, docs/podman.md, tests/test_gateway_*_real.py)
PEERS = [("Docker 20.10 alone, plugin hung on Create", "120 s"),
         ("Docker 20.10 alone, plugin dead", "30 s"),
         ("Podman 4.3.1 alone, hung plugin, volume create", "10.1 s"),
         ("Docker through the gateway, hung plugin, volume create", "~0.07-0.08 s (CLI)"),
         ("Podman through the gateway, hung plugin, volume create", "~0.11 s (CLI)")]


def timed(client: c.RawClient, target: str, body: bytes, want: int) -> float:
    start = time.perf_counter()
    status, answer = client.request("POST", target, body)
    took = time.perf_counter() - start
    if status != want:
        raise RuntimeError(f"POST {target}: {status} {answer[:200]!r}, expected {want}")
    return took


def wait_socket(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no gateway socket {path} after {timeout} s")
        time.sleep(0.02)


def healthy(plugins: Path, gateway: Path, n: int) -> bool:
    name = "p00000"
    wait_socket(gateway / f"{name}.sock")
    direct = c.RawClient(str(plugins / f"{name}.sock"))
    through = c.RawClient(str(gateway / f"{name}.sock"))
    own: list[float] = []
    gw: list[float] = []
    for _ in range(50):  # warm both paths (connections, the plugin client's pool)
        timed(direct, "/VolumeDriver.List", b"", 200)
        timed(through, "/VolumeDriver.List", b"", 200)
    for _ in range(n):
        own.append(timed(direct, "/VolumeDriver.List", b"", 200))
        gw.append(timed(through, "/VolumeDriver.List", b"", 200))
    direct.close()
    through.close()
    p50 = (c.percentile(own, 50), c.percentile(gw, 50))
    p99 = (c.percentile(own, 99), c.percentile(gw, 99))
    rows = [["direct to the plugin", c.ms(p50[0]), c.ms(p99[0]), ""],
            ["through the gateway", c.ms(p50[1]), c.ms(p99[1]),
             f"x{p50[1] / p50[0]:.1f} direct at p50"],
            ["added by the gateway", c.ms(p50[1] - p50[0]), c.ms(p99[1] - p99[0]), ""]]
    print(c.table(rows, [f"List, ms (n={n} each)", "p50", "p99", "ratio"]))
    ok = p50[1] - p50[0] <= ADDED_GOAL
    print(f"  goal added p50 <= {ADDED_GOAL * 1e3:.1f} ms: {c.verdict(ok)}")
    return ok


def refusals(plugins: Path, gateway: Path, n: int, quick: bool) -> bool:
    wait_socket(gateway / "hung.sock")
    client = c.RawClient(str(gateway / "hung.sock"))
    status, body = client.request("POST", "/VolumeDriver.Create", b'{"Name":"v1"}')
    err = json.loads(body).get("Err", "") if status == 500 else ""
    if not err.startswith("volplugd: plugin hung is unhealthy: "):
        raise RuntimeError(f"expected 500 with the state in Err, got {status} {body[:300]!r}")
    took = [timed(client, "/VolumeDriver.Create", b'{"Name":"v1"}', 500) for _ in range(n)]
    client.close()
    p99 = c.percentile(took, 99)
    rows = [["Create to hung via gateway -> 500", c.ms(c.percentile(took, 50)), c.ms(p99),
             c.ms(max(took)), ""]]
    if not quick:
        direct, outcome = direct_call(str(plugins / "hung.sock"))
        rows.append([f"direct List to hung, {PODMAN_TIMEOUT:.0f} s timeout", c.ms(direct), "",
                     "", f"{outcome}; x{direct / p99:,.0f} the gateway's p99"])
    print(c.table(rows, [f"ms (n={n})", "p50", "p99", "max", "beside"]))
    print(c.table(PEERS, ["the clients' own figures (same machine)", "until the error"]))
    ok = p99 <= REFUSAL_GOAL
    print(f"  goal p99 refusal <= {REFUSAL_GOAL * 1e3:.0f} ms: {c.verdict(ok)}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 15 s)")
    parser.add_argument("--plugins", type=int, default=10)
    parser.add_argument("--requests", type=int)
    args = parser.parse_args()
    c.exit_cleanly_on_sigterm()
    n = args.requests or (200 if args.quick else 2000)
    print(f"gateway: {args.plugins} ready plugins + 1 hung; {c.machine_line()}")
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(c.workdir("vpgw")) / "gw"
        config = CONFIG + f'dir = "{gateway}"\n'
        setup = c.Setup.start(stack, args.plugins, config, prefix="vpg")
        make_hung(setup.plugins, setup.responder, setup.daemon, args.plugins)
        print("1. a healthy plugin: direct and through the gateway")
        first = healthy(setup.plugins, gateway, n)
        print("2. a hung (unhealthy) plugin through the gateway")
        second = refusals(setup.plugins, gateway, n, args.quick)
    print(f"gateway: {c.verdict(first and second)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
