"""A property-based fuzz of the control API from its OpenAPI document (schemathesis),
reusable against any live server: this package's tests, or the real daemon.

    with unix_session(socket_path) as session:
        statuses = fuzz_operations("http://localhost", session, ["demo"])

Each generated request must get a documented status (never 500), a body matching its
schema and the documented content type, within 10 s.

``raw_requests()`` is the other fuzz: request *framing* as raw bytes (broken request
lines, versions, fields, Content-Length and Transfer-Encoding, folding, NUL and non-ASCII
bytes), for a test that sends them to a live listener and checks each gets a 4xx.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from volplugd.control import openapi_document

__all__ = ["FUZZ_EXAMPLES", "fuzz_operations", "raw_requests"]

FUZZ_EXAMPLES = 15  # per operation: 16 operations x 15 keeps the run to seconds
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


def fuzz_operations(base_url: str, session: Any, plugins: Sequence[str] = (), *,
                    max_examples: int = FUZZ_EXAMPLES) -> Counter[int]:
    """Run every documented operation with generated inputs; count the statuses seen.

    Reusable against the real daemon: give it the socket's base URL, a session, and
    plugin names worth hitting (a generated name is almost never a registered one).
    ``follow`` is forced off: an open stream never ends, by design.
    """
    schema = schemathesis.openapi.from_dict(openapi_document())
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(), plugin=st.sampled_from([None, *plugins]))
        @settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: Any, plugin: str | None) -> None:
            if case.query:
                case.query.pop("follow", None)
            if plugin is not None and case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = plugin
            response = case.call(base_url=base_url, session=session, timeout=10)
            statuses[response.status_code] += 1
            assert response.status_code != 500, response.text
            case.validate_response(response, checks=CHECKS)

        check()
    return statuses


# --- request framing as raw bytes ----------------------------------------------------

def _mostly(valid: list[bytes], odd: list[bytes], size: int) -> st.SearchStrategy[bytes]:
    """A valid part seven times in eight, else an odd one or any bytes."""
    return st.integers(0, 7).flatmap(
        lambda n: st.sampled_from(odd) | st.binary(max_size=size) if n == 0
        else st.sampled_from(valid))


_EOL = _mostly([b"\r\n"], [b"\n", b"\r", b"", b"\n\r"], 2)
_METHOD = _mostly([b"GET", b"HEAD", b"POST", b"DELETE"],
                  [b"G\x00T", b"", b"GE T", b"\xc3\xa9", b"OPTIONS", b"PATCH"], 8)
_TARGET = _mostly([b"/v1/health", b"/", b"/metrics", b"/v1/plugins/demo/volumes",
                   b"/v1/events?since=0", b"/v1/plugins/demo", b"/v1/rescan"],
                  [b"*", b"http://evil/", b"/%ff", b"/a b", b"/\xff", b"/v1/health\x00", b""], 24)
_VERSION = _mostly([b"HTTP/1.1", b"HTTP/1.0"],
                   [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1111", b"HTTP/" + b"9" * 5000 + b".0",
                    b"HTTP/1", b"http/1.1", b"HTTP/1.1.1", b"HTTP/\xd9\xa1.1", b""], 10)
_NAME = _mostly([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect",
                 b"X-A"],
                [b"content-length", b"Content-Length ", b" Host", b"", b"X\x00",
                 b"\xe2\x82\xac"], 12)
_VALUE = _mostly([b"0", b"5", b"chunked", b"close", b"keep-alive", b"100-continue", b"localhost",
                  b"evil.example", b"[::1]:80"],
                 [b"-1", b"+5", b"1e3", b"5, 5", b"9" * 5000, b"gzip, chunked", b"\xff\xfe",
                  b"a\x00b", b"caf\xc3\xa9", b" folded", b"\xd9\xa3", b"9" * 19], 24)
_SEPARATOR = st.sampled_from([b" ", b" ", b"", b"\t", b"  "])


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """One or two requests' worth of bytes, mostly almost-valid, sometimes any bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    eol = draw(_EOL)
    line = draw(_METHOD) + b" " + draw(_TARGET) + b" " + draw(_VERSION)
    fields = draw(st.lists(st.tuples(_NAME, _VALUE), max_size=3))
    if draw(st.integers(0, 7)) == 0:
        fields.append((b"", draw(_VALUE)))  # a folded continuation line or a bare value
    lines = [line] + [name + b":" + draw(_SEPARATOR) + value if name else value
                      for name, value in fields]
    raw = eol.join(lines) + eol + draw(_mostly([b"\r\n"], [b"\n", b"", b"\r\n\r\n"], 4))
    return raw + draw(st.binary(max_size=40))  # a body, a second request, or garbage
