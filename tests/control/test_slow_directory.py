"""A slow user database (a directory server that does not answer) must not freeze the
daemon: ``serving.peers.groups_of`` asks libc's getgrouplist(3) without holding the GIL.

The slow directory is real libc behaviour made slow: a tiny shim, compiled here and
preloaded into a child Python, sleeps inside ``getgrouplist`` before calling the real
one. (``os.getgrouplist`` holds the GIL for the whole call: every other thread of the
daemon, the supervisor's included, would stop for as long as the directory takes.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <grp.h>
#include <unistd.h>
int getgrouplist(const char *user, gid_t group, gid_t *groups, int *ngroups) {
    int (*real)(const char *, gid_t, gid_t *, int *) = dlsym(RTLD_NEXT, "getgrouplist");
    usleep(300000);
    return real(user, group, groups, ngroups);
}
"""
CHILD = r"""
import json, os, threading, time
from volplugd.serving import peers as access
ticks, ticking, done = [0], threading.Event(), threading.Event()
def tick():
    while not done.is_set():
        time.sleep(0.001)
        ticks[0] += 1
        ticking.set()
threading.Thread(target=tick, daemon=True).start()
assert ticking.wait(10)
before, start = ticks[0], time.monotonic()
groups = access.groups_of(0, 0)
print(json.dumps({"seconds": time.monotonic() - start, "ticks": ticks[0] - before,
                  "groups": sorted(groups), "expected": sorted({0, *os.getgrouplist("root", 0)})}))
done.set()
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (make test installs gcc): the slow-directory shim "
                    "cannot be built")
    folder = tmp_path_factory.mktemp("slowdir")
    (folder / "shim.c").write_text(SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "shim.so"),
                    str(folder / "shim.c"), "-ldl"], check=True)
    return folder / "shim.so"


def test_other_threads_run_while_the_directory_is_slow(shim: Path) -> None:
    """During a 0.3 s getgrouplist, another thread keeps waking every millisecond;
    the groups are still the database's."""
    env = {**os.environ, "LD_PRELOAD": str(shim), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    seen = json.loads(done.stdout)
    assert seen["seconds"] >= 0.3  # the shim was in the way
    assert seen["ticks"] >= 10  # the other thread ran meanwhile (with the GIL held: 0 or 1)
    assert seen["groups"] == seen["expected"]
