"""The one HTTP/1.1 server core of the control socket, the metrics port and the gateway
(docs/architecture.md, "The control plane").

``server.Server`` accepts and gives each connection a thread; ``connection`` serves one
connection; ``wire`` reads and writes its bytes within the head's bounds
(``volplugd.limits``); ``head`` is the one strict parser; ``peers`` says who is on the
other end; ``messages`` is where a server meets its app. The per-uid slots are
``volplugd.admission``'s, the one refusal log ``volplugd.refusals``'.
This module only re-exports their public names and runs no code of its own.
"""

from volplugd.serving.connection import FIRST_REQUEST_TIMEOUT, HEAD_TOO_LARGE, Rules
from volplugd.serving.head import READ_METHODS, BadHead, Head, loopback_host, parse_head
from volplugd.serving.messages import JSON, Application, BodyReader, Reply, Request
from volplugd.serving.peers import Peer, cached_groups, groups_of, peer_of
from volplugd.serving.server import BACKLOG, Server
from volplugd.serving.wire import RequestTimeout

__all__ = [
    "BACKLOG", "FIRST_REQUEST_TIMEOUT", "HEAD_TOO_LARGE", "JSON", "READ_METHODS",
    "Application", "BadHead", "BodyReader", "Head", "Peer", "Reply", "Request",
    "RequestTimeout", "Rules", "Server",
    "cached_groups", "groups_of", "loopback_host", "parse_head", "peer_of",
]
