"""volplugd.plugin is a library on its own: a curated __all__ and no daemon imports."""

from __future__ import annotations

import json
import subprocess
import sys

import volplugd.plugin


def test_all_names_exist() -> None:
    """Every name in __all__ is importable from volplugd.plugin."""
    missing = [name for name in volplugd.plugin.__all__ if not hasattr(volplugd.plugin, name)]
    assert missing == []


def test_import_pulls_in_nothing_of_the_daemon() -> None:
    """A fresh interpreter importing volplugd.plugin loads no other volplugd module,
    none of the daemon's heavy dependencies, and no second HTTP stack."""
    code = ("import json, sys, volplugd.plugin; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('volplugd', 'watchdog', 'prometheus_client', 'structlog', 'requests', "
            "'requests_unixsocket', 'urllib3'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    loaded = json.loads(out)
    assert [m for m in loaded if not m.startswith("volplugd.plugin")] == ["volplugd"]
