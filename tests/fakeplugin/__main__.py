"""Run a fake plugin in the foreground until SIGTERM or SIGINT (for humans, system tests).

    python -m tests.fakeplugin /run/docker/plugins/demo.sock \\
        [--implements VolumeDriver] [--behave /VolumeDriver.Create=hang]... [--http10]

Behaviour specs: see ``behaviours.parse`` (normal, hang, slow:SECONDS, drip:BPS:TOTAL,
huge:SIZE, garbage[:TEXT], html[:STATUS], err200:ERR, status-err:STATUS:ERR,
implements:A,B, status:CODE[:BODY], json:JSON, close-mid, disconnect).

Runs on: the main thread waits for a signal; the FakePlugin's threads serve.
"""

from __future__ import annotations

import argparse
import signal
import sys

from tests.fakeplugin.behaviours import Behaviour, parse
from tests.fakeplugin.server import DEFAULT_CONTENT_TYPE, FakePlugin


def _behave(text: str) -> tuple[str, Behaviour]:
    endpoint, sep, spec = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"want ENDPOINT=SPEC, got {text!r}")
    try:
        return endpoint, parse(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.fakeplugin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("socket", help="unix socket path to listen on (a stale socket is removed)")
    p.add_argument("--implements", action="append", default=[], metavar="KIND",
                   help="Activate's manifest entry, repeatable or comma separated "
                        "(default VolumeDriver)")
    p.add_argument("--behave", action="append", default=[], type=_behave,
                   metavar="ENDPOINT=SPEC", help='e.g. /VolumeDriver.Create=hang, "*=slow:1"')
    p.add_argument("--scope", default="local", help="Capabilities scope (default local)")
    p.add_argument("--content-type", default=DEFAULT_CONTENT_TYPE)
    p.add_argument("--http10", action="store_true", help="answer HTTP/1.0, close every time")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kinds = [k for arg in args.implements for k in arg.split(",") if k] or ["VolumeDriver"]
    signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server threads exist, so they inherit the mask and sigwait()
    # below is the one place the signals arrive.
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    # The behaviours are in place before the socket exists (volplugd connects at once).
    plugin = FakePlugin(args.socket, kinds, http10=args.http10, scope=args.scope,
                        content_type=args.content_type, behaviours=dict(args.behave))
    print(f"fakeplugin listening on {args.socket} implements={','.join(kinds)}", flush=True)
    received = signal.sigwait(signals)
    plugin.stop()
    print(f"fakeplugin stopped by {signal.Signals(received).name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
