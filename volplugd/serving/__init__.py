"""The one HTTP/1.1 server core of the control socket, the metrics port and the gateway
(docs/architecture.md, "The control plane").

``server.Server`` accepts and gives each connection a thread; ``connection`` serves one
connection; ``wire`` reads and writes its bytes within the head's bounds; ``head`` is the
one strict parser; ``budget`` holds the per-uid slots and the one refusal log;
``peers`` says who is on the other end; ``messages`` is where a server meets its app.
This module only re-exports their public names and runs no code of its own.
"""

from volplugd.serving.budget import REFUSAL_LOG_SECONDS, Budget, Refusal, RefusalLog, Ticket
from volplugd.serving.connection import FIRST_REQUEST_TIMEOUT, Rules
from volplugd.serving.head import READ_METHODS, BadHead, Head, loopback_host, parse_head
from volplugd.serving.messages import JSON, Application, BodyReader, Reply, Request
from volplugd.serving.peers import Peer, cached_groups, groups_of, peer_of
from volplugd.serving.server import BACKLOG, Server
from volplugd.serving.wire import RequestTimeout

__all__ = [
    "BACKLOG", "FIRST_REQUEST_TIMEOUT", "JSON", "READ_METHODS", "REFUSAL_LOG_SECONDS",
    "Application", "BadHead", "BodyReader", "Budget", "Head", "Peer", "Refusal",
    "RefusalLog", "Reply", "Request", "RequestTimeout", "Rules", "Server", "Ticket",
    "cached_groups", "groups_of", "loopback_host", "parse_head", "peer_of",
]
