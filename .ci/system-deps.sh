#!/usr/bin/env bash
# Installs the Debian packages the test suite drives as real peers, when missing:
#   promtool/prometheus (metrics + rules), systemd-analyze/systemd-socket-activate,
#   systemd-nspawn (systemd-container: boots a real systemd for the installed units),
#   btrfs-progs (buttervolume), podman (a real plugin client), docker.io (the real
#   dockerd, run by the tests in a private mount namespace; on a host with systemd the
#   package also enables docker.service), chromium (status page), curl, util-linux
#   (setpriv, unshare), gcc (builds the slow user-database shim of one test). Needs
#   root and apt; otherwise it says what is missing and the tests that need a tool
#   skip naming it.
set -u
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have promtool || need+=(prometheus)
have systemd-analyze || need+=(systemd)
have systemd-nspawn || need+=(systemd-container)
have mkfs.btrfs || need+=(btrfs-progs)
have podman || need+=(podman)
{ have dockerd && have docker; } || need+=(docker.io)
have chromium || need+=(chromium)
have curl || need+=(curl)
{ have setpriv && have unshare; } || need+=(util-linux)
have cc || need+=(gcc libc6-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! have apt-get; then
  echo "system-deps: not root or no apt-get; missing: ${need[*]} (tests needing them will skip, saying so)" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${need[@]}" >&2 ||
  { apt-get update -q >&2 && apt-get install -y -q "${need[@]}" >&2; } ||
  echo "system-deps: apt-get failed for: ${need[*]}" >&2
exit 0
