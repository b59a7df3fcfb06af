"""The process, platform and GC families in the text format 0.0.4, the bytes that
prometheus_client's ``generate_latest`` writes for them, without its generic work.

``generate_latest`` escapes and validates every name and label of every sample: for
these ~30 samples that was half of a scrape of 150 plugins (0.5 of 0.9 ms; the
collectors' own reading of /proc is the rest). The families these collectors make are
plain (gauges, counters and one info, no timestamps, no OpenMetrics-only samples, names
valid as they are); anything else goes to ``generate_latest`` itself, whole.

Runs on: the threads that serve a scrape (collectors are thread-safe).
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

__all__ = ["runtime_text"]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = {"counter": "counter", "gauge": "gauge", "info": "gauge"}


def runtime_text(registry: CollectorRegistry) -> bytes:
    """``generate_latest(registry)``, byte for byte."""
    families = list(registry.collect())
    if not all(_plain(m) for m in families):
        return generate_latest(registry)
    out = []
    for m in families:
        name = m.name + {"counter": "_total", "info": "_info"}.get(m.type, "")
        doc = m.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPES[m.type]}\n")
        for s in m.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
            out.append(f"{s.name}{{{labels}}} {_go(s.value)}\n" if labels
                       else f"{s.name} {_go(s.value)}\n")
    return "".join(out).encode()


def _plain(m: Metric) -> bool:
    """A family this module writes as generate_latest would (see the module docstring)."""
    return m.type in _TYPES and _NAME.fullmatch(m.name) is not None and all(
        s.timestamp is None and s.exemplar is None and _NAME.fullmatch(s.name) is not None
        and not s.name.endswith(("_created", "_gsum", "_gcount"))
        and all(_LABEL.fullmatch(k) for k in s.labels) for s in m.samples)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _go(value: float) -> str:
    """The value as Go (and generate_latest) spells it."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text
