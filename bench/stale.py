"""What one look for stale sockets costs the loop (``discovery.remove_stale_after``), as the
host's unix sockets grow, beside a connect in the same run.

With N more listening unix sockets on the host (this process binds them on tmpfs), it
times, interleaved, R rounds each:
  * one non-blocking ``connect()`` to a stale socket (the baseline: what a look pays per
    watched socket whatever the host),
  * reading ``/proc/net/unix`` whole, which a look does once when a watched socket is
    refused, and finding one name in it (``Bound.holds``),
  * a whole look at one refused socket: connect, read, parse, ``holds``.
Goals: a look p99 ≤ 5 ms with 1,000 host sockets (a busy host), ≤ 50 ms with 10,000:
far below the loop's own goal for probe lateness (p99 ≤ 1 s); a look runs every
remove_stale_after / 4 (30 s for "2m"), and reads /proc/net/unix only when a watched
socket is refused.
Usage: python bench/stale.py [--quick]
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable

import _common as c  # also puts the checkout on sys.path

from volplugd.supervision.stale import Bound, connect_code, read_proc_net_unix

GOALS = {1000: 0.005, 10000: 0.050}  # host sockets added -> a look's p99


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sockets and rounds")
    args = parser.parse_args()
    counts, rounds = ((0, 1000), 20) if args.quick else ((0, 1000, 10000), 200)
    c.exit_cleanly_on_sigterm()
    c.fd_limit_for(max(counts) + 64)
    print(c.machine_line())
    rows, ok = [], True
    with c.workdir("vp-stale-") as work:
        dead = work / "dead.sock"
        gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        gone.bind(str(dead))
        gone.close()
        held: list[socket.socket] = []
        try:
            for count in counts:
                while len(held) < count:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.bind(str(work / f"s{len(held)}.sock"))
                    sock.listen(1)
                    held.append(sock)
                text = read_proc_net_unix()
                samples: dict[str, list[float]] = {"connect": [], "read": [], "parse": [],
                                                   "look": []}
                for _ in range(rounds):
                    samples["connect"].append(timed(lambda: connect_code(str(dead))))
                    samples["read"].append(timed(read_proc_net_unix))
                    bound = Bound(text)
                    samples["parse"].append(timed(lambda: bound.holds(str(dead))))  # noqa: B023
                    samples["look"].append(timed(lambda: (
                        connect_code(str(dead)),
                        Bound(read_proc_net_unix()).holds(str(dead)))))
                entries = text.count(b"\n") - 1
                base = c.percentile(samples["connect"], 50)
                look = c.percentile(samples["look"], 99)
                ok = ok and look <= GOALS.get(count, float("inf"))
                rows.append([f"+{count}", entries, len(text) // 1024, c.ms(base),
                             c.ms(c.percentile(samples["read"], 50)),
                             c.ms(c.percentile(samples["parse"], 50)),
                             c.ms(c.percentile(samples["look"], 50)), c.ms(look),
                             f"x{c.percentile(samples['look'], 50) / base:,.0f}"])
        finally:
            for sock in held:
                sock.close()
    print(c.table(rows, ["host sockets", "entries", "KiB", "connect p50 ms", "read p50 ms",
                       "find p50 ms", "look p50 ms", "look p99 ms", "look/connect"]))
    goals = ", ".join(f"{g * 1e3:g} ms at +{n}" for n, g in GOALS.items())
    print(f"goal: a look's p99 <= {goals}: {c.verdict(ok)}")


if __name__ == "__main__":
    main()
