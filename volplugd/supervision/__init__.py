"""Supervision's building blocks: who serves a plugin, seeing it exit, restarting what
runs it within a budget (issue 23; docs/supervision.md).

* ``identity`` — a plugin socket's listening process, from the kernel only
  (``SO_PEERCRED``/``SO_PEERPIDFD``, ``/proc``), and what runs it (``cgroup``);
* ``pidfd`` — ``PidFd`` and ``ProcessWatch``: one pollable descriptor, readable when a
  watched process exits;
* ``budget`` — ``RestartBudget``: systemd's ``StartLimitBurst=`` with growing backoff (pure);
* ``units`` — systemd's Manager over D-Bus (``RestartUnit`` with its job awaited; the
  ``.socket`` unit that listens on a path), through ``dbus``, a typed wrapper of jeepney;
* ``engine`` — a container's restart through the Docker or Podman engine API.

None of these modules imports another part of volplugd but ``volplugd.plugin``.
"""
