"""Discovery: which plugins the filesystem says should exist, and hints that it changed.

``scan`` (pure, the truth; see ``scan.py``) and ``Watcher`` (inotify hints; see
``watcher.py``) are siblings: the watcher uses the scan's path helpers, never the reverse.
This package only re-exports their public names.
Runs on: nothing itself; see each module for its threads.
"""

from volplugd.discovery.scan import Ignored, ScanResult, plugin_path_of, scan, scan_one
from volplugd.discovery.watcher import Watcher

__all__ = ["Ignored", "ScanResult", "Watcher", "plugin_path_of", "scan", "scan_one"]
