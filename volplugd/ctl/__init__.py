"""``volplugctl``: the command line over volplugd's control socket.

Speaks only HTTP/1.1 + JSON on the AF_UNIX control socket and imports nothing of the
daemon, watchdog, prometheus_client or structlog (an import-linter contract checks it),
so it starts fast. ``wire`` speaks HTTP/1.1, ``client`` turns answers into results or
errors, ``render`` shows them, ``commands`` does one command each, ``cli`` parses
arguments and maps failures to exit codes.

Exit status: 0 success; 1 an error from the daemon or a plugin (one line on stderr,
``volplugctl: <code>: <message>``); 2 a usage error; 3 the daemon is not reachable.
``events --follow`` ends with 0 on Ctrl-C and with 3 when volplugd stops; a closed
stdout (``| head``) ends quietly with 0. Runs on: the main thread of the volplugctl process.
"""

from volplugd.ctl.cli import main

__all__ = ["main"]
