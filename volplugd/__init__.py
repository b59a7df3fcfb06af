"""volplugd: a node-local supervisor for Docker/Podman legacy (v1) volume plugins.

Only :mod:`volplugd.plugin` is a library API; everything else is internal.
This module stays import-free so that ``volplugctl`` starts fast.
"""

__version__ = "0.1.0"
