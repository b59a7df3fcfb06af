"""The daemon configurations system tests share, defined once.

``fast()`` renders the ``[probe]`` and ``[plugin]`` tables of a daemon that notices
within a second or two what a test does to its plugins: short probe intervals and
timeouts, activations that give up quickly. A test that needs other values says so by
overriding them by name (``fast(failure_threshold=1)``), never by a copy of the text.
"""

from __future__ import annotations

import os

__all__ = ["FAST", "PATIENT", "fast", "gateway"]


def fast(*, interval: float = 0.3, timeout: float = 0.3, failure_threshold: int = 2,
         activate: float = 0.5, default: float = 1.0) -> str:
    """TOML for quick probes: every ``interval`` s, each within ``timeout`` s, a plugin
    unhealthy after ``failure_threshold`` failures in a row; activations within
    ``activate`` s and other calls within ``default`` s."""
    return (f"[probe]\ninterval = {interval}\ntimeout = {timeout}\n"
            f"failure_threshold = {failure_threshold}\n"
            f"[plugin]\ntimeouts = {{ activate = {activate}, default = {default} }}\n")


#: Most system tests: a plugin is unhealthy two failed probes (~0.6 s) after it stops.
FAST = fast()

#: Tests whose plugins are hostile or many (slower answers are expected, one failure
#: makes a plugin unhealthy): longer intervals and deadlines, still quick.
PATIENT = fast(interval=0.5, timeout=0.5, failure_threshold=1, activate=1.0, default=2.0)


def gateway(tmp: str | os.PathLike[str], *, specs: str, dropin: str | None = None,
            via_gateway: bool = False) -> str:
    """TOML of a daemon with the gateway on (sockets in ``TMP/gw``, Docker spec files in
    ``TMP/SPECS``) and, with ``dropin`` (a path below ``TMP``), the Podman drop-in;
    probes every 0.2 s, one failure makes a plugin unhealthy."""
    text = ("[probe]\ninterval = 0.2\ntimeout = 0.2\nfailure_threshold = 1\n"
            f'[gateway]\nenabled = true\ndir = "{tmp}/gw"\nmode = "0600"\n'
            f'docker_specs = true\ndocker_spec_dir = "{tmp}/{specs}"\n')
    if dropin is not None:
        text += f'[podman]\nenabled = true\ndropin = "{tmp}/{dropin}"\n'
        if via_gateway:
            text += "via_gateway = true\n"
    return text
