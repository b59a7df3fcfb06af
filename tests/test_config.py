"""Settings: defaults <- TOML file <- overrides, every validation error's exact text,
the shipped example file, and the printed effective configuration."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volplugd.config import (
    DEFAULT_PLUGIN_TIMEOUTS,
    PROBE_ENDPOINTS,
    TIMEOUT_KEYS,
    ConfigError,
    ControlSettings,
    DiscoverySettings,
    LogSettings,
    MetricsSettings,
    PodmanSettings,
    ProbeSettings,
    RestartSettings,
    Settings,
    load_settings,
    parse_listen,
    settings_to_dict,
    settings_to_toml,
)
from volplugd.config.settings import SECTIONS
from volplugd.config.tomlwriter import toml_string
from volplugd.plugin import protocol

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "volplugd" / "volplugd.toml"
DOCS = ROOT / "docs" / "config.md"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "volplugd.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(tmp_path: Path, text: str = "", overrides: dict[str, object] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), overrides)
    return str(caught.value)


def all_keys(settings: Settings) -> set[str]:
    return {f"{section}.{key}" for section, table in settings_to_dict(settings).items()
            for key in table}


# ---------------------------------------------------------------- sources and precedence

def test_no_file_gives_the_built_in_defaults() -> None:
    """Without a file or overrides, load_settings returns Settings()."""
    assert load_settings(None) == Settings()


def test_the_shipped_example_file_equals_the_defaults() -> None:
    """etc/volplugd/volplugd.toml loads to exactly the built-in defaults."""
    assert load_settings(str(EXAMPLE)) == Settings()


def test_the_shipped_example_file_sets_every_key() -> None:
    """The example names every setting (the optional one in a comment), so none is undocumented."""
    parsed = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    in_file = {f"{s}.{k}" for s, table in parsed.items() for k in table}
    assert in_file == all_keys(Settings())
    assert "# volume_plugin_timeout = " in EXAMPLE.read_text(encoding="utf-8")
    assert '# remove_stale_after = "2m"' in EXAMPLE.read_text(encoding="utf-8")


def test_the_docs_name_every_key_and_flag() -> None:
    """docs/config.md has a row for every dotted key and every flag of the CLI."""
    text = DOCS.read_text(encoding="utf-8")
    keys = all_keys(Settings()) | {"podman.volume_plugin_timeout",
                                   "discovery.remove_stale_after"}
    assert {k for k in keys if f"`{k}`" not in text} == set()
    for flag in ("--config", "--plugin-dir", "--control-socket", "--metrics-listen",
                 "--no-metrics", "--probe-interval", "--probe-timeout", "--failure-threshold",
                 "--log-format", "--log-level", "--podman", "--podman-dropin", "--gateway",
                 "--version",
                 "check-config"):
        assert f"`{flag}" in text, flag


def test_file_overrides_defaults_and_overrides_beat_the_file(tmp_path: Path) -> None:
    """A key in the file replaces its default; a dotted override replaces the file's value."""
    path = write(tmp_path, "[probe]\ninterval = 20\ntimeout = 2\n[log]\nlevel = 'debug'\n")
    got = load_settings(path, {"probe.interval": 30.0, "discovery.dirs": ["/srv/plugins"]})
    assert got.probe == ProbeSettings(interval=30.0, timeout=2.0)
    assert got.log == LogSettings(level="debug")
    assert got.discovery == DiscoverySettings(dirs=("/srv/plugins",))
    assert got.control == ControlSettings()


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    """A file with no tables changes nothing."""
    assert load_settings(write(tmp_path, "# nothing\n")) == Settings()


def test_timeouts_are_merged_over_the_defaults(tmp_path: Path) -> None:
    """plugin.timeouts keeps the default entries that the file does not name."""
    got = load_settings(write(tmp_path, "[plugin]\ntimeouts = { mount = 30, list = 2.5 }\n"))
    assert dict(got.plugin.timeouts) == {
        **DEFAULT_PLUGIN_TIMEOUTS, "mount": 30.0, "list": 2.5}
    assert isinstance(got.plugin.timeouts, MappingProxyType)


@pytest.mark.parametrize(
    ("value", "mode"),
    [('"0660"', 0o660), ('"640"', 0o640), ('"0o600"', 0o600), ("0o755", 0o755), ("416", 416)],
)
def test_control_mode_accepts_octal_strings_and_integers(
    tmp_path: Path, value: str, mode: int
) -> None:
    """control.mode is an octal string ("0660", "640", "0o600") or a TOML integer."""
    assert load_settings(write(tmp_path, f"[control]\nmode = {value}\n")).control.mode == mode


@pytest.mark.parametrize("listen", ["", "127.0.0.1:9612", "[::1]:9612", "localhost:0",
                                    "0.0.0.0:65535", "metrics.example.org:80"])
def test_metrics_listen_accepts_host_port_and_empty(tmp_path: Path, listen: str) -> None:
    """metrics.listen takes HOST:PORT, [IPV6]:PORT, or "" (no TCP listener)."""
    got = load_settings(None, {"metrics.listen": listen})
    assert got.metrics == MetricsSettings(listen=listen)


@pytest.mark.parametrize(("listen", "split"), [
    ("127.0.0.1:9612", ("127.0.0.1", 9612)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_listen_splits_host_and_port(listen: str, split: tuple[str, int]) -> None:
    """parse_listen returns the host (IPv6 without brackets) and the port number."""
    assert parse_listen(listen) == split


def test_names_of_levels_and_formats_are_case_insensitive(tmp_path: Path) -> None:
    """log.level "WARNING" and log.format "JSON" are accepted and stored in lower case."""
    got = load_settings(write(tmp_path, '[log]\nlevel = "WARNING"\nformat = "JSON"\n'))
    assert got.log == LogSettings(format="json", level="warning")


def test_podman_settings_are_read(tmp_path: Path) -> None:
    """Every podman key is read with its type, volume_plugin_timeout included."""
    text = ('[podman]\nenabled = true\ndropin = "/etc/c/50.conf"\n'
            "volume_plugin_timeout = 15\nremove_on_stop = true\n")
    assert load_settings(write(tmp_path, text)).podman == PodmanSettings(
        enabled=True, dropin="/etc/c/50.conf", volume_plugin_timeout=15, remove_on_stop=True)


# ---------------------------------------------------------------- validation errors

ERRORS = [
    # unknown keys: a typo must not pass silently
    ("[probes]\n", "probes: unknown key (did you mean \"probe\"?)"),
    ("[zzz]\n", "zzz: unknown key (expected one of: discovery, probe, plugin, control, "
                "metrics, log, podman, gateway, restart)"),
    ("[restart]\nunits = [\"buttervolume\"]\n", 'restart.units[0]: must be a service unit '
     'name like "plugin.service", got "buttervolume"'),
    ("[restart]\nunits = [\"a b.service\"]\n", 'restart.units[0]: must be a service unit '
     'name like "plugin.service", got "a b.service"'),
    ("[restart]\nburst = 0\n", "restart.burst: must be >= 1, got 0"),
    ("[restart]\nhold = -1\n", "restart.hold: must be > 0, got -1"),
    ("[probe]\nintervall = 3\n", 'probe.intervall: unknown key (did you mean "interval"?)'),
    ("[plugin]\ntimeouts = { mout = 1 }\n",
     'plugin.timeouts.mout: unknown key (did you mean "mount"?)'),
    ("probe = 3\n", "probe: must be a table, got 3"),
    # numbers: bool is not a number, ranges are checked
    ("[probe]\ninterval = -1\n", "probe.interval: must be > 0, got -1"),
    ("[probe]\ninterval = 0\n", "probe.interval: must be > 0, got 0"),
    ("[probe]\ninterval = true\n", "probe.interval: must be a number of seconds, got true"),
    ('[probe]\ninterval = "10s"\n', 'probe.interval: must be a number of seconds, got "10s"'),
    ("[probe]\ninterval = inf\n", "probe.interval: must be a finite number, got inf"),
    ("[probe]\ninterval = nan\n", "probe.interval: must be a finite number, got nan"),
    ("[probe]\ntimeout = 0.0\n", "probe.timeout: must be > 0, got 0"),
    ("[probe]\ntimeout = 11\n", "probe.timeout: must be <= probe.interval (10), got 11"),
    ("[probe]\ninterval = 2.5\n", "probe.timeout: must be <= probe.interval (2.5), got 5"),
    ("[probe]\nfailure_threshold = 0\n", "probe.failure_threshold: must be >= 1, got 0"),
    ("[probe]\nsuccess_threshold = 1.5\n",
     "probe.success_threshold: must be an integer, got 1.5"),
    ("[probe]\nsuccess_threshold = false\n",
     "probe.success_threshold: must be an integer, got false"),
    ('[probe]\nendpoint = "/VolumeDriver.Get"\n',
     'probe.endpoint: must be one of "/Plugin.Activate", "/VolumeDriver.Capabilities", '
     '"/VolumeDriver.List", got "/VolumeDriver.Get"'),
    ("[discovery]\nrescan_interval = -0.5\n", "discovery.rescan_interval: must be > 0, got -0.5"),
    ('[discovery]\nremove_stale_after = "2 min"\n', 'discovery.remove_stale_after: must be a '
     'number of seconds or a duration such as "2m" (ms, s, m, h), got "2 min"'),
    ('[discovery]\nremove_stale_after = "-2m"\n', 'discovery.remove_stale_after: must be a '
     'number of seconds or a duration such as "2m" (ms, s, m, h), got "-2m"'),
    ('[discovery]\nremove_stale_after = "0s"\n',
     "discovery.remove_stale_after: must be > 0, got 0"),
    ("[discovery]\nremove_stale_after = 0\n", "discovery.remove_stale_after: must be > 0, got 0"),
    ("[discovery]\nremove_stale_after = true\n",
     "discovery.remove_stale_after: must be a number of seconds, got true"),
    ("[plugin]\nmax_response_bytes = 0\n", "plugin.max_response_bytes: must be >= 1, got 0"),
    ("[plugin]\ntimeouts = 5\n", "plugin.timeouts: must be a table, got 5"),
    ("[plugin]\ntimeouts = { mount = -2 }\n", "plugin.timeouts.mount: must be > 0, got -2"),
    ('[plugin]\ntimeouts = { default = "1m" }\n',
     'plugin.timeouts.default: must be a number of seconds, got "1m"'),
    # directories
    ("[discovery]\ndirs = []\n", "discovery.dirs: must not be empty"),
    ('[discovery]\ndirs = "/run/docker/plugins"\n',
     'discovery.dirs: must be an array of strings, got "/run/docker/plugins"'),
    ('[discovery]\ndirs = ["/a", "plugins"]\n',
     'discovery.dirs[1]: must be an absolute path, got "plugins"'),
    ('[discovery]\ndirs = ["/a", 3]\n', "discovery.dirs[1]: must be a string, got 3"),
    ('[discovery]\ndirs = ["/a", ""]\n', "discovery.dirs[1]: must not be empty"),
    ('[discovery]\ndirs = ["/a", "/b", "/a"]\n',
     'discovery.dirs[2]: repeats discovery.dirs[0] "/a"'),
    # control socket
    ('[control]\nsocket = "control.sock"\n',
     'control.socket: must be an absolute path, got "control.sock"'),
    (f'[control]\nsocket = "/{"x" * 107}"\n',
     "control.socket: must be at most 107 bytes long, got 108"),
    ('[control]\nmode = "0669"\n',
     'control.mode: must be an octal string like "0660" or an integer, got "0669"'),
    ('[control]\nmode = "rw-rw----"\n',
     'control.mode: must be an octal string like "0660" or an integer, got "rw-rw----"'),
    ("[control]\nmode = 0o4777\n", 'control.mode: must be within "0000".."0777", got "4777"'),
    ("[control]\nmode = true\n",
     'control.mode: must be an octal string like "0660" or an integer, got true'),
    ('[control]\ngroup = ""\n', "control.group: must not be empty"),
    ('[control]\nread_groups = "docker"\n',
     'control.read_groups: must be an array of strings, got "docker"'),
    ('[control]\nadmin_groups = ["wheel", 0]\n',
     "control.admin_groups[1]: must be a string, got 0"),
    # metrics listener
    ('[metrics]\nlisten = "localhost"\n',
     'metrics.listen: must be "HOST:PORT" or "", got "localhost"'),
    ('[metrics]\nlisten = "::1:9612"\n',
     'metrics.listen: an IPv6 address needs brackets, like [::1]:9612, got "::1:9612"'),
    ('[metrics]\nlisten = "[nope]:9612"\n',
     'metrics.listen: not an IPv6 address inside the brackets, got "[nope]:9612"'),
    ('[metrics]\nlisten = "127.0.0.1:70000"\n',
     'metrics.listen: port must be a number 0..65535, got "127.0.0.1:70000"'),
    ('[metrics]\nlisten = "127.0.0.1:"\n',
     'metrics.listen: port must be a number 0..65535, got "127.0.0.1:"'),
    ('[metrics]\nlisten = ":9612"\n',
     'metrics.listen: host must be an IP address or a host name, got ":9612"'),
    ("[metrics]\nlisten = 9612\n", "metrics.listen: must be a string, got 9612"),
    # log
    ('[log]\nformat = "text"\n',
     'log.format: must be one of "auto", "json", "console", got "text"'),
    ('[log]\nlevel = "loud"\n',
     'log.level: must be one of "debug", "info", "warning", "error", "critical", got "loud"'),
    ('[log]\nlevel = "notset"\n',
     'log.level: must be one of "debug", "info", "warning", "error", "critical", got "notset"'),
    # podman
    ('[podman]\nenabled = "yes"\n', 'podman.enabled: must be true or false, got "yes"'),
    ("[podman]\nremove_on_stop = 1\n", "podman.remove_on_stop: must be true or false, got 1"),
    ('[podman]\ndropin = "50-volplugd.conf"\n',
     'podman.dropin: must be an absolute path, got "50-volplugd.conf"'),
    ("[podman]\nvolume_plugin_timeout = 0\n", "podman.volume_plugin_timeout: must be >= 1, got 0"),
    ("[podman]\nvolume_plugin_timeout = 2.5\n",
     "podman.volume_plugin_timeout: must be an integer, got 2.5"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_a_bad_setting_names_its_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    """Each invalid value raises ConfigError with exactly this "key: problem" text."""
    assert error_of(tmp_path, text) == message


def test_config_error_carries_the_key_and_the_problem(tmp_path: Path) -> None:
    """ConfigError.key is the dotted key and .problem the text after it."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "[probe]\nfailure_threshold = -3\n"))
    assert (caught.value.key, caught.value.problem) == ("probe.failure_threshold",
                                                        "must be >= 1, got -3")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"probe.interval": -1.0}, "probe.interval: must be > 0, got -1"),
    ({"probe.timeout": 10.5}, "probe.timeout: must be <= probe.interval (10), got 10.5"),
    ({"metrics.lisen": ""}, 'metrics.lisen: unknown key (did you mean "listen"?)'),
    ({"log.level.extra": "x"}, 'log.level: must be a table, got "info"'),
    ({"discovery.dirs": ("/ok", "rel")}, 'discovery.dirs[1]: must be an absolute path, got "rel"'),
])
def test_overrides_are_validated_like_the_file(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    """A bad flag value fails with the same "key: problem" text as the same bad file value."""
    assert error_of(tmp_path, '[log]\nlevel = "info"\n', overrides) == message


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """A config path that does not exist fails with the path and the OS's reason."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(str(missing))
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    """A config path that is a directory fails with the path and the OS's reason."""
    with pytest.raises(ConfigError) as caught:
        load_settings(str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"


def test_invalid_toml_names_the_file_line_and_column(tmp_path: Path) -> None:
    """TOML syntax errors carry the file name and TOML's line and column."""
    path = write(tmp_path, "[probe]\ninterval = \n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"{path}: not valid TOML: Invalid value (at line 2, column 12)"


def test_a_repeated_key_is_invalid_toml(tmp_path: Path) -> None:
    """A key given twice is rejected by TOML itself, not silently taken once."""
    path = write(tmp_path, "[probe]\ninterval = 10\ninterval = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    expected = f"{path}: not valid TOML: Cannot overwrite a value (at line 3, column 13)"
    assert str(caught.value) == expected


def test_a_file_that_is_not_utf8_is_rejected(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 fail with the file name and the byte offset."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[control]\ngroup = "\xe9quipe"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert str(caught.value) == f"{path}: not valid TOML: not UTF-8 at byte 19"


# ---------------------------------------------------------------- effective config output

def test_effective_config_reads_back_equal(tmp_path: Path) -> None:
    """settings_to_toml output loads back to the very same Settings (non-defaults too)."""
    settings = load_settings(None, {
        "discovery.dirs": ["/srv/a b", "/srv/ü"], "probe.interval": 0.25,
        "probe.timeout": 0.125, "control.mode": "0600", "control.read_groups": ["docker"],
        "plugin.timeouts": {"unmount": 9}, "metrics.listen": "", "podman.enabled": True,
        "podman.volume_plugin_timeout": 12,
    })
    assert load_settings(write(tmp_path, settings_to_toml(settings))) == settings


def test_effective_config_spells_mode_in_octal() -> None:
    """The printed control.mode is the octal string operators write, not 432."""
    assert settings_to_dict(Settings())["control"]["mode"] == "0660"


def test_an_unset_optional_key_is_left_out() -> None:
    """podman.volume_plugin_timeout = None has no TOML spelling, so it is omitted."""
    assert "volume_plugin_timeout" not in settings_to_dict(Settings())["podman"]
    assert "volume_plugin_timeout = 3" in settings_to_toml(
        dataclasses.replace(Settings(), podman=PodmanSettings(volume_plugin_timeout=3)))


_GROUP = st.text(st.characters(codec="utf-8", exclude_characters="\0"),
                 min_size=1, max_size=12)
_SECONDS = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(groups=st.lists(_GROUP, max_size=3, unique=True), interval=_SECONDS,
       share=st.floats(min_value=0.01, max_value=1.0),
       dirs=st.lists(st.text(min_size=1, max_size=8).map(lambda s: "/" + s.replace("\0", "")),
                     min_size=1, max_size=3, unique=True))
def test_any_valid_settings_round_trip_through_toml(
    groups: list[str], interval: float, share: float, dirs: list[str]
) -> None:
    """Strings with quotes, controls and non-ASCII, and any float, survive print and reload."""
    settings = load_settings(None, {
        "control.read_groups": groups, "probe.interval": interval,
        "probe.timeout": interval * share, "discovery.dirs": dirs,
    })
    assert load_settings_from_text(settings_to_toml(settings)) == settings


def load_settings_from_text(text: str) -> Settings:
    """Parse printed TOML the way load_settings does, without a file per example."""
    parsed = tomllib.loads(text)
    flat = {f"{s}.{k}": v for s, table in parsed.items() for k, v in table.items()}
    return load_settings(None, flat)


def test_effective_config_is_one_table_per_section() -> None:
    """The printed document has the seven sections, in the order of the Settings fields."""
    sections = re.findall(r"^\[(\w+)\]$", settings_to_toml(Settings()), flags=re.MULTILINE)
    assert sections == [f.name for f in dataclasses.fields(Settings)]


# ---------------------------------------------------------------- one source for each fact

def test_every_field_carries_its_check_and_the_tables_are_the_settings_fields() -> None:
    """The known tables and keys are derived from the dataclasses: each field has a check."""
    assert list(SECTIONS) == [f.name for f in dataclasses.fields(Settings)]
    for name, cls in SECTIONS.items():
        assert cls is type(getattr(Settings(), name))
        for item in dataclasses.fields(cls):
            assert callable(item.metadata["check"]), f"{name}.{item.name}"


def test_timeout_keys_and_probe_endpoints_come_from_the_protocol() -> None:
    """plugin.timeouts takes protocol's keys; its defaults are protocol's deadlines that
    differ from "default" (so that setting "default" moves all the others)."""
    assert tuple(protocol.DEFAULT_TIMEOUTS) == TIMEOUT_KEYS
    assert set(PROBE_ENDPOINTS) <= set(protocol.ENDPOINTS)
    assert protocol.resolve_timeouts(Settings().plugin.timeouts) == protocol.DEFAULT_TIMEOUTS
    moved = load_settings(None, {"plugin.timeouts": {"default": 30}}).plugin.timeouts
    assert protocol.resolve_timeouts(moved) == {
        **dict.fromkeys(TIMEOUT_KEYS, 30.0), "activate": 5.0, "create": 120.0, "mount": 120.0}


def test_check_config_and_the_podman_dropin_spell_strings_alike() -> None:
    """One TOML writer: a string is written the same in check-config and the drop-in."""
    group = 'a"b\\c\x1b\x7f\tü'
    printed = settings_to_toml(load_settings(None, {"control.group": group}))
    assert f"group = {toml_string(group)}\n" in printed
    assert toml_string(group) == '"a\\"b\\\\c\\u001b\\u007f\\tü"'
    assert tomllib.loads(printed)["control"]["group"] == group


def test_an_undecodable_flag_value_is_printed_and_quoted_not_a_crash(tmp_path: Path) -> None:
    """A path from an undecodable argv byte (a lone surrogate) is printed by check-config
    as it came and quoted in errors; only the drop-in's strict toml_string refuses it."""
    printed = settings_to_toml(load_settings(None, {"discovery.dirs": ["/srv/\udcff"]}))
    assert 'dirs = ["/srv/\udcff"]' in printed
    assert error_of(tmp_path, "", {"discovery.dirs": ["rel\udcff"]}) == (
        'discovery.dirs[0]: must be an absolute path, got "rel\udcff"')
    with pytest.raises(UnicodeEncodeError):
        toml_string("/srv/\udcff")


def test_restart_settings_load_with_their_unit_names(tmp_path: Path) -> None:
    """[restart] is read as written; units keep their order."""
    got = load_settings(write(tmp_path, '[restart]\nenabled = true\nafter = 2.5\nburst = 5\n'
                                        'units = ["buttervolume.service", "plug@a.service"]\n'))
    assert got.restart == RestartSettings(enabled=True, after=2.5, burst=5, units=(
        "buttervolume.service", "plug@a.service"))


@pytest.mark.parametrize(("value", "seconds"), [
    ('"2m"', 120.0), ('"90s"', 90.0), ('"500ms"', 0.5), ('"1.5h"', 5400.0), ("45", 45.0),
    ("0.25", 0.25)])
def test_remove_stale_after_takes_seconds_or_a_duration(
        tmp_path: Path, value: str, seconds: float) -> None:
    """A number of seconds, or text with ms, s, m or h; written back as seconds, read equal."""
    got = load_settings(write(tmp_path, f"[discovery]\nremove_stale_after = {value}\n"))
    assert got.discovery.remove_stale_after == seconds
    assert load_settings_from_text(settings_to_toml(got)) == got


def test_remove_stale_after_is_off_unless_set() -> None:
    """The default is None (never remove), and check-config leaves the key out."""
    assert Settings().discovery.remove_stale_after is None
    assert "remove_stale_after" not in settings_to_dict(Settings())["discovery"]
