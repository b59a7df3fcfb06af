"""The gateway (opt-in, ``[gateway] enabled``): one v1-protocol unix socket per plugin
that forwards to the plugin while it is ``ready`` and answers at once with its state and
last error when it is not, so Docker and Podman fail fast too (docs/gateway.md).

``server`` keeps the sockets and accepts; ``choice`` picks the plugins that get one;
``connection`` speaks HTTP/1.1 on one connection; ``answer`` decides each answer;
``specs`` writes Docker's spec files. This module only re-exports their public names and
runs no code of its own on any thread.
"""

from __future__ import annotations

from volplugd.gateway.answer import Reply, Request, answer
from volplugd.gateway.choice import name_problem, serves, socket_path
from volplugd.gateway.server import Gateway, OnGatewayRequest
from volplugd.gateway.specs import DOCKER_SOCKETS, DOCKER_SPECS, SpecFiles

__all__ = ["DOCKER_SOCKETS", "DOCKER_SPECS", "Gateway", "OnGatewayRequest", "Reply",
           "Request", "SpecFiles", "answer", "name_problem", "serves", "socket_path"]
