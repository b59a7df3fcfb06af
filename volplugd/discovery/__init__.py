"""Discovery: which plugins the filesystem says should exist, and hints that it changed.

``scan`` (pure, the truth; see ``scan.py``) and ``Watcher`` (inotify hints, one level
deep; see ``watcher.py``, and ``inotify.py`` for its reader and watch trees) are
siblings: both use ``paths`` (which plugin a path concerns), neither imports the other.
``trust`` (which plugin folders may speak for root; see ``trust.py``) is used by the scan.
This package only re-exports their public names.
Runs on: nothing itself; see each module for its threads.
"""

from volplugd.discovery.scan import Ignored, ScanResult, plugin_path_of, scan, scan_one
from volplugd.discovery.trust import UNTRUSTED, Trust, untrusted_reason
from volplugd.discovery.watcher import Watcher

__all__ = ["UNTRUSTED", "Ignored", "ScanResult", "Trust", "Watcher", "plugin_path_of", "scan",
           "scan_one", "untrusted_reason"]
