"""Who may do what on the control socket: peer credentials → allow, read-only, or refuse.

The rule is pure (``decide``) so it is unit-testable without a socket; the groups come
from ``serving.peers`` (the user database, cached briefly).
Runs on: connection threads; the accept thread (``keeps_reserved_slots``, never asking
the user database).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from volplugd.serving import READ_METHODS, Peer, cached_groups

__all__ = ["AccessPolicy", "Grant", "decide"]


class Grant(Enum):
    ALL = "all"
    READ = "read"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Root and ``admin_gids`` members may do everything; ``read_gids`` members GET/HEAD."""

    admin_gids: frozenset[int] = frozenset()
    read_gids: frozenset[int] = frozenset()

    def grant(self, peer: Peer | None, groups: frozenset[int]) -> Grant:
        """What this peer may do. No credentials at all (not a unix socket) → nothing."""
        if peer is None:
            return Grant.NONE
        if peer.uid == 0 or groups & self.admin_gids:
            return Grant.ALL
        if groups & self.read_gids:
            return Grant.READ
        return Grant.NONE

    def keeps_reserved_slots(self, peer: Peer, groups: frozenset[int] | None) -> bool | None:
        """Root and admins keep the control socket's reserved slots. A non-root peer's
        ``groups`` (None: take them from the cache) matter only when admin groups are
        configured; None when they do and are not known (the server then asks on the
        connection's own thread)."""
        if peer.uid == 0 or not self.admin_gids:
            return peer.uid == 0
        if groups is None:
            groups = cached_groups(peer.uid, peer.gid)
        return None if groups is None else bool(groups & self.admin_gids)


def decide(policy: AccessPolicy, peer: Peer | None, groups: frozenset[int],
           method: str) -> bool:
    """True if ``peer`` (member of ``groups``) may send a request with ``method``."""
    grant = policy.grant(peer, groups)
    return grant is Grant.ALL or (grant is Grant.READ and method in READ_METHODS)
