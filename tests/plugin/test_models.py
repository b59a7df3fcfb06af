"""Parsing plugin answers like Go's decoder, but strictly: pure functions, no server."""

from __future__ import annotations

import dataclasses

import pytest

from volplugd.plugin import Capabilities, Manifest, Volume
from volplugd.plugin.models import (
    ResponseError,
    decode_object,
    field,
    parse_capabilities,
    parse_err,
    parse_manifest,
    parse_mountpoint,
    parse_volume,
    parse_volumes,
)


def test_keys_fold_like_go() -> None:
    """Any case matches, the Kelvin sign folds to k, and the last matching key wins."""
    obj = decode_object(b'{"Mountpoint": "/a", "mountPOINT": "/b", "other": 1}')
    assert field(obj, "Mountpoint") == "/b"
    assert field(decode_object('{"\u212aey": 1}'.encode()), "key") == 1
    assert field(obj, "Missing") is None


def test_null_reads_as_absent() -> None:
    """A top-level null is an empty object, and null members are their zero values."""
    assert decode_object(b"null") == {}
    assert parse_err(decode_object(b'{"Err": null}')) == ""
    assert parse_manifest(decode_object(b'{"Implements": null}')) == Manifest(())
    assert parse_volumes(decode_object(b'{"Volumes": null}')) == []


@pytest.mark.parametrize(("body", "problem"), [
    (b"", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"[1]", "not a JSON object but a list"),
    (b'"text"', "not a JSON object but a string"),
    (b"3", "not a JSON object but a number"),
    (b'{"Err": NaN}', "not JSON: NaN is not valid JSON"),
    (b"[" * 100000, "not JSON: nested too deeply"),
    (b'{"Err": ""} trailing', "not JSON: Extra data: line 1 column 13 (char 12)"),
])
def test_bodies_that_are_no_json_object(body: bytes, problem: str) -> None:
    """Anything but one JSON object (Go would also refuse NaN and trailing data) is refused."""
    with pytest.raises(ResponseError) as caught:
        decode_object(body)
    assert str(caught.value) == problem


def test_invalid_utf8_is_escaped_visibly() -> None:
    """Invalid UTF-8 inside strings becomes a visible \\xff escape (Go would write
    U+FFFD, which hides the byte), not an error and never a surrogate."""
    assert parse_err(decode_object(b'{"Err": "bad \xff byte"}')) == "bad \\xff byte"


def test_volume_members() -> None:
    """Name, Mountpoint, CreatedAt and Status come across; an empty Mountpoint is None."""
    obj = decode_object(b'{"Volume": {"name": "v", "Mountpoint": "", "CreatedAt": "2024-01-01",'
                        b' "Status": {"size": {"used": 1}}, "Extra": true}}')
    volume = parse_volume(obj)
    assert volume == Volume("v", None, "2024-01-01", {"size": {"used": 1}})
    assert type(volume.status["size"]) is dict  # type: ignore[index]
    assert volume.to_json() == {"name": "v", "mountpoint": None, "created_at": "2024-01-01",
                                "status": {"size": {"used": 1}}}


def test_models_are_frozen() -> None:
    """Results are immutable values, safe to share between threads."""
    volume = Volume("v")
    with pytest.raises(dataclasses.FrozenInstanceError):
        volume.name = "w"  # type: ignore[misc]
    with pytest.raises(TypeError):
        parse_volume(decode_object(b'{"Volume": {"Name": "v", "Status": {}}}'
                                   )).status["x"] = 1  # type: ignore[index]
    assert Volume("v").to_json() == {"name": "v", "mountpoint": None, "created_at": None,
                                     "status": None}


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"Capabilities": {"Scope": "Global"}}', Capabilities("global")),
    (b'{"Capabilities": {}}', Capabilities("local")),
    (b"{}", Capabilities("local")),
])
def test_capabilities(body: bytes, expected: Capabilities) -> None:
    """Scope is lowercased (as Docker does) and defaults to local."""
    assert parse_capabilities(decode_object(body)) == expected


@pytest.mark.parametrize(("parse", "body", "problem"), [
    (parse_capabilities, b'{"Capabilities": "local"}', "Capabilities is a string, not an object"),
    (parse_capabilities, b'{"Capabilities": {"Scope": 1}}', "Scope is a number, not a string"),
    (parse_volume, b'{"Volume": {"Name": "v", "Status": []}}', "Status is a list, not an object"),
    (parse_volume, b'{"Volume": {"Name": "v", "CreatedAt": 5}}',
     "CreatedAt is a number, not a string"),
    (parse_volume, b'{"Volume": {"Name": ""}}', "a volume without a Name"),
    (parse_volumes, b'{"Volumes": [{"Name": "a"}, {}]}', "a volume without a Name"),
    (lambda obj: parse_mountpoint(obj, required=True), b'{"Mountpoint": null}',
     "no Mountpoint in the answer"),
])
def test_wrong_shapes_are_errors(parse: object, body: bytes, problem: str) -> None:
    """A member of the wrong type is an error naming it, never a silent zero value."""
    with pytest.raises(ResponseError) as caught:
        parse(decode_object(body))  # type: ignore[operator]
    assert str(caught.value) == problem
