"""The ``volplugd`` console script as a real process: --version, check-config, flag
precedence, and the exact one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until
from volplugd import __version__
from volplugd.cli import build_parser, flag_overrides, resolve_config_path
from volplugd.config import (
    DEFAULT_CONFIG_PATH,
    ProbeSettings,
    Settings,
    load_settings,
    settings_to_toml,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "volplugd" / "volplugd.toml"


def volplugd_script() -> str:
    script = shutil.which("volplugd", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the volplugd console script is not installed beside this Python")
    return script


def volplugd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([volplugd_script(), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def printed_settings(stdout: str) -> Settings:
    """Read check-config's output back through the loader (it must be valid TOML)."""
    parsed = tomllib.loads(stdout)
    flat = {f"{s}.{k}": v for s, table in parsed.items() for k, v in table.items()}
    return load_settings(None, flat)


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "volplugd.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- the real process

def test_version_prints_the_package_version() -> None:
    """`volplugd --version` prints "volplugd VERSION" and exits 0."""
    done = volplugd("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"volplugd {__version__}\n", "")


def test_check_config_prints_the_effective_config_of_a_good_file(tmp_path: Path) -> None:
    """check-config on a valid file exits 0 and prints TOML that loads back equal."""
    path = config(tmp_path, '[probe]\ninterval = 20\n[control]\nmode = "0600"\n')
    done = volplugd("check-config", "--config", path)
    assert (done.returncode, done.stderr) == (0, "")
    assert printed_settings(done.stdout) == load_settings(path)
    assert done.stdout.startswith(f"# volplugd {__version__} effective configuration\n"
                                  f"# config file: {path}\n\n")
    assert 'mode = "0600"\n' in done.stdout


def test_check_config_of_the_shipped_example_prints_the_defaults() -> None:
    """The example file passes check-config and its effective config is the defaults."""
    done = volplugd("check-config", "--config", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(settings_to_toml(Settings()))


def test_check_config_without_a_file_uses_the_default_path_or_defaults() -> None:
    """Without --config, check-config reads /etc/volplugd/volplugd.toml if present, else none."""
    done = volplugd("check-config")
    assert done.returncode == 0, done.stderr
    assert printed_settings(done.stdout) == load_settings(resolve_config_path(None))


def test_a_bad_value_in_the_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A bad setting prints exactly "volplugd: config error: KEY: PROBLEM" and exits 2."""
    done = volplugd("check-config", "--config", config(tmp_path, "[probe]\ninterval = -1\n"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "volplugd: config error: probe.interval: must be > 0, got -1\n"


def test_a_bad_flag_value_is_reported_like_a_bad_file_value(tmp_path: Path) -> None:
    """--probe-interval -1 fails with the same line as interval = -1 in the file."""
    done = volplugd("check-config", "--config", config(tmp_path, ""), "--probe-interval", "-1")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "volplugd: config error: probe.interval: must be > 0, got -1\n"


def test_the_daemon_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    """Without check-config, a bad setting also ends the process with the line and exit 2."""
    done = volplugd("--config", config(tmp_path, "[probe]\nendpoint = '/x'\n"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ('volplugd: config error: probe.endpoint: must be one of '
                           '"/Plugin.Activate", "/VolumeDriver.Capabilities", '
                           '"/VolumeDriver.List", got "/x"\n')


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    """A typo in the file is a config error, never silently ignored."""
    done = volplugd("check-config", "--config", config(tmp_path, "[log]\nlevl = 'debug'\n"))
    assert (done.returncode, done.stderr) == (
        2, 'volplugd: config error: log.levl: unknown key (did you mean "level"?)\n')


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    """--config naming a file that does not exist exits 2 naming the file."""
    missing = tmp_path / "missing.toml"
    done = volplugd("check-config", "--config", str(missing))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"volplugd: config error: {missing}: cannot read: No such file or directory\n")


def test_invalid_toml_reports_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error exits 2 with the file, line and column."""
    path = config(tmp_path, "[probe]\ninterval 10\n")
    done = volplugd("check-config", "--config", path)
    assert (done.returncode, done.stderr) == (2, (
        f"volplugd: config error: {path}: not valid TOML: "
        "Expected '=' after a key in a key/value pair (at line 2, column 10)\n"))


def test_flags_override_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    """A flag beats the file's value; the file beats the default; the rest stay default."""
    path = config(tmp_path, "[probe]\ninterval = 20\ntimeout = 2\nfailure_threshold = 5\n"
                            '[log]\nlevel = "debug"\n')
    done = volplugd("--probe-interval", "30", "check-config", "--config", path,
                    "--plugin-dir", "/srv/a", "--plugin-dir", "/srv/b", "--no-metrics",
                    "--log-format", "json", "--podman-dropin", "/srv/podman.conf")
    assert done.returncode == 0, done.stderr
    got = printed_settings(done.stdout)
    assert got.probe == ProbeSettings(interval=30.0, timeout=2.0, failure_threshold=5)
    assert got.discovery.dirs == ("/srv/a", "/srv/b")
    assert (got.log.format, got.log.level) == ("json", "debug")
    assert got.metrics.listen == ""
    assert (got.podman.enabled, got.podman.dropin) == (True, "/srv/podman.conf")
    assert got.control == Settings().control


@pytest.mark.parametrize(("args", "last_line"), [
    (["--bogus"], "volplugd: error: unrecognized arguments: --bogus"),
    (["--metrics-listen", "127.0.0.1:1", "--no-metrics", "check-config"],
     "volplugd: error: argument --no-metrics: not allowed with argument --metrics-listen"),
    (["check-config", "--probe-interval", "soon"],
     "volplugd check-config: error: argument --probe-interval: invalid float value: 'soon'"),
    (["check-config", "--log-format", "xml"],
     "volplugd check-config: error: argument --log-format: invalid choice: 'xml' "
     "(choose from 'auto', 'json', 'console')"),
    (["frobnicate"],
     "volplugd: error: argument COMMAND: invalid choice: 'frobnicate' "
     "(choose from 'check-config')"),
])
def test_usage_errors_exit_2(args: list[str], last_line: str) -> None:
    """Argparse usage errors print usage and one error line, and exit 2."""
    done = volplugd(*args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("usage: volplugd")
    assert done.stderr.splitlines()[-1] == last_line


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder under /tmp: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="vp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def logged(path: Path) -> list[dict[str, object]]:
    """The daemon's stderr so far, every complete line parsed as JSON."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


@pytest.mark.system
def test_the_daemon_logs_json_and_sighup_rereads_the_file_under_the_same_flags(
    short_dir: Path,
) -> None:
    """Running: JSON lines on a non-TTY stderr at the file's level; SIGHUP re-reads the
    file (a new level shows) with the flags re-applied (--log-format json beats the
    file's "console"); SIGTERM exits 0."""
    (short_dir / "plugins").mkdir()
    conf = short_dir / "volplugd.toml"
    conf.write_text('[log]\nlevel = "warning"\nformat = "console"\n', encoding="utf-8")
    stderr_path = short_dir / "stderr"
    argv = [volplugd_script(), "--config", str(conf), "--log-format", "json", "--no-metrics",
            "--plugin-dir", str(short_dir / "plugins"),
            "--control-socket", str(short_dir / "c.sock")]
    with stderr_path.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until((short_dir / "c.sock").exists, timeout=30, message="the control socket")
        assert [e for e in logged(stderr_path) if e["level"] == "info"] == []
        conf.write_text('[log]\nlevel = "info"\nformat = "console"\n', encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any(e["level"] == "info" for e in logged(stderr_path)),
                   timeout=30, message="an info line after SIGHUP")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stderr_path.read_text(encoding="utf-8").endswith("\n")
    assert logged(stderr_path)  # every line of it is JSON


# ---------------------------------------------------------------- in-process helpers

def test_the_default_config_path_is_used_only_if_it_exists(tmp_path: Path) -> None:
    """Without --config the default file is read if present, else built-in defaults apply."""
    present = tmp_path / "volplugd.toml"
    present.write_text("", encoding="utf-8")
    assert resolve_config_path(None, str(present)) == str(present)
    assert resolve_config_path(None, str(tmp_path / "absent.toml")) is None
    assert resolve_config_path("/given.toml", str(present)) == "/given.toml"
    assert DEFAULT_CONFIG_PATH == "/etc/volplugd/volplugd.toml"


def test_only_given_flags_become_overrides() -> None:
    """No flags, no overrides: the file's values are never reset by a flag's default."""
    assert flag_overrides(build_parser().parse_args([])) == {}
    assert flag_overrides(build_parser().parse_args(["check-config"])) == {}


def test_each_flag_sets_its_documented_key() -> None:
    """Every flag maps to the dotted key docs/config.md names for it."""
    args = build_parser().parse_args([
        "--plugin-dir", "/a", "--control-socket", "/run/c.sock", "--metrics-listen", "[::1]:1",
        "--probe-interval", "4", "--probe-timeout", "2", "--failure-threshold", "7",
        "--log-format", "CONSOLE", "--log-level", "Warning", "--podman",
    ])
    assert flag_overrides(args) == {
        "discovery.dirs": ["/a"], "control.socket": "/run/c.sock", "metrics.listen": "[::1]:1",
        "probe.interval": 4.0, "probe.timeout": 2.0, "probe.failure_threshold": 7,
        "log.format": "console", "log.level": "warning", "podman.enabled": True,
    }
