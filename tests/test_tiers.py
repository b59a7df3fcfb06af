"""The tier rule: a test that starts a real process without its marker fails, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tiers
from tests.harness import Daemon


def test_an_unmarked_test_that_starts_the_daemon_fails_before_it_starts(short_tmp: Path) -> None:
    """Daemon.start() in a test without ``system`` fails at once; no process is started."""
    d = Daemon(short_tmp)
    expected = (r"^tests/test_tiers.py::test_an_unmarked_test_that_starts_the_daemon_fails_"
                r"before_it_starts starts the volplugd process: mark it @pytest.mark.system "
                r"\(tests/tiers.py\)$")
    with pytest.raises(pytest.fail.Exception, match=expected):
        d.start()
    assert d.proc is None


def test_an_unmarked_test_may_not_run_a_peer_even_where_it_is_missing() -> None:
    """The marker is checked before the program is looked for, so no skip hides it."""
    with pytest.raises(pytest.fail.Exception, match=r" runs no-such-program-here: mark it "
                                                    r"@pytest\.mark\.peer "):
        tiers.tool("no-such-program-here", "none")


@pytest.mark.peer
def test_a_marked_test_gets_the_programs_path() -> None:
    """With its marker, a test gets the program's path from PATH."""
    assert Path(tiers.tool("sh", "dash")).exists()


@pytest.mark.peer
def test_a_marked_test_skips_naming_the_package_of_a_missing_program() -> None:
    """A missing program is a skip that names its Debian package."""
    with pytest.raises(pytest.skip.Exception,
                       match=r"^no-such-program-here is not installed \(Debian package "
                             r"some-package; make system-deps\)$"):
        tiers.tool("no-such-program-here", "some-package")
