"""Discovery's scan: which plugins the filesystem says should exist.

``scan(dirs)`` is the truth: it reads the plugin directories (Docker's rules: sockets
beat spec files, an earlier directory beats a later one) and returns the desired state.
``scan_one`` answers the same for one name (``paths.plugin_path_of``, re-exported here
with the other path helpers, maps a changed path to it). Both are pure apart from
reading the filesystem and never raise for filesystem trouble; they raise OSError when
the process is out of descriptors or memory (``EXHAUSTED``): a scan that could not look
must not report every plugin gone. A plugin whose name is not valid UTF-8 is skipped
(``Ignored``, with its path escaped): it could be shown only by a name that is not its
own. Each winner's folders are judged by ``trust`` (once per scan): an untrusted plugin
leads its warnings with ``untrusted: <why>``, and its ``.json`` may not name key or
certificate files. Every plugin file is read through ``read_plugin_file`` (never
blocks; no symlink followed in an untrusted folder). The scan reads one level of
``<name>/`` folders, never deeper.
Runs on: the supervisor thread.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from volplugd.discovery.paths import (
    is_inside,
    is_plugin_folder,
    is_plugin_name,
    normalized_dirs,
    plugin_path_of,
)
from volplugd.discovery.trust import UNTRUSTED, Trust
from volplugd.model import DesiredPlugin, FileIdentity, Kind
from volplugd.plugin.address import (
    EXHAUSTED,
    PluginAddress,
    address_from_socket,
    load_address,
    read_plugin_file,
)
from volplugd.plugin.errors import PluginAddressError
from volplugd.plugin.text import is_utf8, safe_text

__all__ = ["GATEWAY_MARK", "GENERATED_SPEC", "Ignored", "ScanResult", "is_inside",
           "is_plugin_folder", "normalized_dirs", "plugin_path_of", "scan", "scan_one"]

_KINDS = {".sock": Kind.SOCK, ".spec": Kind.SPEC, ".json": Kind.JSON}
# Docker's order inside one directory: flat before nested, .spec before .json.
_POSITION = {(Kind.SOCK, False): 0, (Kind.SOCK, True): 1, (Kind.SPEC, False): 0,
             (Kind.SPEC, True): 1, (Kind.JSON, False): 2, (Kind.JSON, True): 3}
_WRONG_TYPE = {Kind.SOCK: "not a socket", Kind.SPEC: "not a regular file",
               Kind.JSON: "not a regular file"}
# volplugd's own files are never plugins: a folder holding GATEWAY_MARK is a gateway
# folder (its sockets lead back to volplugd), and a .json file starting with
# GENERATED_SPEC is a Docker spec file volplugd wrote (see volplugd.gateway).
GATEWAY_MARK = ".volplugd-gateway"
GENERATED_SPEC = b'{"Generated-By":"volplugd'
NOT_UTF8 = "plugin name is not valid UTF-8 (the plugin is skipped)"


@dataclass(frozen=True, slots=True)
class Ignored:
    """A file that looks like a plugin's but is not used, and why. Both are text to
    show: a path that is not UTF-8 is kept with its bytes escaped (``\\xff``)."""

    path: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", safe_text(self.path, None))
        object.__setattr__(self, "reason", safe_text(self.reason))


@dataclass(frozen=True)
class ScanResult:
    desired: Mapping[str, DesiredPlugin]  # name -> winner, sorted by name
    ignored: tuple[Ignored, ...]  # the caller logs each (path, reason) once
    dirs_present: tuple[str, ...]


class _Candidate(NamedTuple):  # a tuple: scans build a thousand of these
    rank: tuple[int, int, int]
    name: str
    path: str
    kind: Kind
    st: os.stat_result


class _Found:
    """What one scan collects before the winners are chosen."""

    def __init__(self, trusted: Sequence[str]) -> None:
        self.trust = Trust(trusted)  # one per scan: each folder is judged once
        self.candidates: dict[str, list[_Candidate]] = {}
        self.ignored: list[Ignored] = []
        self.present: list[str] = []

    def add(self, path: str, name: str, kind: Kind, order: int, nested: bool) -> None:
        try:  # lstat first: most paths a scan_one tries do not exist (one call, not two)
            st = os.lstat(path)
        except OSError as err:
            _unstattable(path, err, self.ignored, link=False)
            return
        if stat.S_ISLNK(st.st_mode):
            try:
                st = os.stat(path)  # a plugin's identity is its target's
            except OSError as err:
                _unstattable(path, err, self.ignored, link=True)
                return
        if not is_utf8(name):  # it could not be named faithfully in JSON, metrics or logs
            self.ignored.append(Ignored(path, NOT_UTF8))
            return
        if not (stat.S_ISSOCK(st.st_mode) if kind is Kind.SOCK else stat.S_ISREG(st.st_mode)):
            self.ignored.append(Ignored(path, _WRONG_TYPE[kind]))
            return
        if kind is Kind.JSON and _generated(path):
            return  # a spec file volplugd wrote for Docker: it leads back to volplugd
        rank = (0 if kind is Kind.SOCK else 1, order, _POSITION[kind, nested])
        candidate = _Candidate(rank, name, path, kind, st)
        others = self.candidates.get(name)
        if others is None:
            self.candidates[name] = [candidate]
        else:
            others.append(candidate)

    def result(self) -> ScanResult:
        desired = {}
        for name in sorted(self.candidates):
            winner = _choose(self.candidates[name], self.ignored, self.trust)
            if winner is not None:
                desired[name] = winner
        return ScanResult(MappingProxyType(desired), tuple(self.ignored), tuple(self.present))


def scan(dirs: Sequence[str], trusted: Sequence[str] = ()) -> ScanResult:
    """Every plugin the directories offer, resolved by Docker's precedence. Paths in
    ``trusted`` (``discovery.trust``) are trusted whatever their modes (see ``trust``)."""
    found = _Found(trusted)
    for order, root in _existing_dirs(dirs, found):
        _scan_dir(root, order, found)
    return found.result()


def scan_one(name: str, dirs: Sequence[str], trusted: Sequence[str] = ()) -> ScanResult:
    """What ``scan(dirs, trusted)`` would say about ``name`` alone, looking at its paths
    only."""
    found = _Found(trusted)
    for order, root in _existing_dirs(dirs, found):
        if not is_plugin_name(name):
            continue
        folder = os.path.join(root, name)
        nested_ok = (is_plugin_folder(name) and _may_hold(folder)
                     and not _is_gateway(folder))
        for kind, suffix in ((Kind.SOCK, ".sock"), (Kind.SPEC, ".spec"), (Kind.JSON, ".json")):
            found.add(os.path.join(root, name + suffix), name, kind, order, nested=False)
            if nested_ok:
                found.add(os.path.join(root, name, name + suffix), name, kind, order, nested=True)
    return found.result()


def _existing_dirs(dirs: Sequence[str], found: _Found) -> list[tuple[int, str]]:
    """The configured directories that exist, each real directory once (first wins)."""
    seen: set[tuple[int, int]] = set()
    existing = []
    for order, root in enumerate(normalized_dirs(dirs)):
        try:
            st = os.stat(root)
        except (FileNotFoundError, NotADirectoryError):
            continue  # a missing directory is normal: it may appear later
        except OSError as err:
            found.ignored.append(Ignored(root, f"cannot stat: {err.strerror}"))
            continue
        if not stat.S_ISDIR(st.st_mode):
            found.ignored.append(Ignored(root, "not a directory"))
        elif (st.st_dev, st.st_ino) not in seen and not _is_gateway(root):
            seen.add((st.st_dev, st.st_ino))
            existing.append((order, root))
            found.present.append(root)
    return existing


def _scan_dir(root: str, order: int, found: _Found) -> None:
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                _consider(entry, order, found)
    except FileNotFoundError:
        return  # removed while we looked: the next scan will not see it either
    except OSError as err:
        if err.errno in EXHAUSTED:  # a scan that could not look must not say all went
            raise
        found.ignored.append(Ignored(root, f"cannot read: {err.strerror}"))


def _consider(entry: os.DirEntry[str], order: int, found: _Found) -> None:
    """One entry of a plugin directory: a plugin file, a plugin's folder, or noise."""
    name = entry.name
    if name.startswith("."):
        return
    stem, dot, suffix = name.rpartition(".")
    kind = _KINDS.get(dot + suffix) if stem else None
    if kind is not None:
        found.add(entry.path, stem, kind, order, nested=False)
    elif is_plugin_folder(name) and _is_dir(entry):
        _scan_folder(entry.path, name, order, found)


def _scan_folder(folder: str, name: str, order: int, found: _Found) -> None:
    """``<name>/<name>.sock|.spec|.json``; anything else in the folder is not ours."""
    wanted = {name + suffix: kind for suffix, kind in _KINDS.items()}
    try:
        with os.scandir(folder) as entries:
            names = [(e.path, e.name) for e in entries]
    except OSError as err:
        if err.errno in EXHAUSTED:
            raise
        return  # a folder we cannot read holds no plugin we could use
    if any(n == GATEWAY_MARK for _, n in names):
        return
    hits = [(path, wanted[n]) for path, n in names if n in wanted]
    for path, kind in hits:
        found.add(path, name, kind, order, nested=True)


def _may_hold(folder: str) -> bool:
    """Whether a ``<name>/`` folder may hold plugin files: not when there is none (its
    paths need not be tried one by one), but when it cannot be looked at (they say why)."""
    try:
        return stat.S_ISDIR(os.stat(folder).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def _is_gateway(folder: str) -> bool:
    return os.path.lexists(os.path.join(folder, GATEWAY_MARK))


def _generated(path: str) -> bool:
    """volplugd writes its spec files as regular files: a symlink is never one of them."""
    try:
        return read_plugin_file(path, follow_symlinks=False).startswith(GENERATED_SPEC)
    except PluginAddressError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _unstattable(path: str, err: OSError, ignored: list[Ignored], *, link: bool) -> None:
    """``link``: the path is a symlink, and following it failed."""
    if not isinstance(err, FileNotFoundError | NotADirectoryError):
        ignored.append(Ignored(path, f"cannot stat: {err.strerror}"))
    elif link:
        ignored.append(Ignored(path, "dangling symlink"))
    # else there is no such file (or it vanished during the scan): nothing to say


def _choose(candidates: list[_Candidate], ignored: list[Ignored], trust: Trust
            ) -> DesiredPlugin | None:
    """The best usable candidate; the others it shadows become warnings."""
    if len(candidates) == 1:  # the common case, kept cheap
        return _desired(candidates[0], (), ignored, trust)
    candidates.sort()  # by rank first; ranks are unique per candidate path
    for i, best in enumerate(candidates):
        # Two links to the same file are one plugin, not a duplicate.
        shadowed = [c.path for c in candidates[i + 1:] if not _same_file(c.st, best.st)]
        desired = _desired(best, tuple(f"shadows {p}" for p in shadowed), ignored, trust)
        if desired is None:
            continue
        ignored.extend(Ignored(p, f"shadowed by {best.path}") for p in shadowed)
        return desired
    return None


def _desired(candidate: _Candidate, warnings: tuple[str, ...], ignored: list[Ignored],
             trust: Trust) -> DesiredPlugin | None:
    """The plugin ``candidate`` offers, with its warnings; None if it offers none."""
    untrusted = trust.plugin_file(candidate.path, candidate.st,
                                  nested=_is_nested(candidate))
    address = _address(candidate, ignored, untrusted)
    if address is None:
        return None
    if untrusted is not None:
        warnings = (UNTRUSTED + untrusted, *warnings)
    if address.tls is not None and address.tls.insecure_skip_verify:
        warnings = (*warnings, _UNVERIFIED[candidate.kind])
    return DesiredPlugin(candidate.name, address, candidate.path, candidate.kind,
                         FileIdentity.of(candidate.st), warnings=warnings)


# An https plugin without certificate verification: anyone on the path can pose as it.
_UNVERIFIED = {
    Kind.SPEC: "https without certificate verification (a .spec file's https address "
               "is never verified, as in Docker)",
    Kind.JSON: "https without certificate verification (TLSConfig has no CAFile, or "
               "InsecureSkipVerify)",
    Kind.SOCK: "https without certificate verification",
}


_NESTED = frozenset(position for (_, nested), position in _POSITION.items() if nested)


def _is_nested(candidate: _Candidate) -> bool:
    return candidate.rank[2] in _NESTED


def _address(candidate: _Candidate, ignored: list[Ignored], untrusted: str | None
             ) -> PluginAddress | None:
    try:
        if candidate.kind is Kind.SOCK:
            return address_from_socket(candidate.path)
        # A file in an untrusted folder must not make root read key or certificate files,
        # nor open what a symlink there names (a device, whatever it does when opened).
        trusted = untrusted is None
        return load_address(candidate.path, tls_files=trusted, follow_symlinks=trusted)
    except PluginAddressError as err:
        if os.path.lexists(candidate.path):  # else it vanished between stat and read
            reason = err.problem
            if untrusted is not None:
                reason += f"; {UNTRUSTED}{untrusted}"
            ignored.append(Ignored(candidate.path, reason))
    return None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
