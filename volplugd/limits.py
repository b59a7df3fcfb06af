"""The bounds on a request head that every server of volplugd keeps (the control socket,
the metrics port, the gateway): one place for the numbers, so they cannot drift apart.
"""

from __future__ import annotations

__all__ = ["MAX_HEAD_BYTES", "MAX_REQUEST_LINE"]

MAX_REQUEST_LINE = 8 * 1024  # over it: 414
# request line and headers, over it: 431 (http.client alone would allow 100 x 64 KiB)
MAX_HEAD_BYTES = 64 * 1024
