"""notifications.jsonlimits: depth and size limits on JSON at the service's edges."""

import json
from typing import Any

import pytest
from django.conf import settings as django_settings
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifications.exceptions import InvalidJson
from notifications.jsonlimits import json_encoded_size, json_parse, json_value_check
from tests.hostile import deep_values, json_depth, json_ish_text, json_values, python_values, sendable


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_documents_at_the_limit_parse(settings: Any) -> None:
    assert json_parse(nested(settings.JSON_MAX_DEPTH)) is not None
    assert json_parse('{"a": {"b": [1, "x", null]}}') == {"a": {"b": [1, "x", None]}}


@pytest.mark.parametrize("depth", [33, 5_000, 100_000])
def test_deeper_documents_are_refused_without_a_recursion_error(depth: int, settings: Any) -> None:
    assert settings.JSON_MAX_DEPTH == 32
    with pytest.raises(InvalidJson, match="nested more than 32 levels"):
        json_parse(nested(depth))


def test_objects_count_as_levels_too() -> None:
    text = '{"a":' * 3 + "1" + "}" * 3
    assert json_parse(text, max_depth=3) == {"a": {"a": {"a": 1}}}
    with pytest.raises(InvalidJson):
        json_parse(text, max_depth=2)


@pytest.mark.parametrize(
    "text",
    ["", "{", "nul", '{"a": NaN}', "[Infinity]", "[-Infinity]", b"\xff\xfe", "[1e999]", "-1e400", "9" * 400 + ".0"],
)
def test_malformed_documents_and_non_json_constants_are_refused(text: str | bytes) -> None:
    with pytest.raises(InvalidJson, match="Not valid JSON"):
        json_parse(text)


def test_depth_check_stops_on_a_cycle() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidJson):
        json_value_check(loop, max_depth=10)


def test_depth_check_walks_wide_values_and_tuples() -> None:
    json_value_check({"a": [1] * 10_000, "b": ({"c": 1},)}, max_depth=3)
    with pytest.raises(InvalidJson):
        json_value_check({"a": [1] * 10_000, "b": ({"c": []},)}, max_depth=3)


def test_encoded_size_is_compact_utf8_and_refuses_what_is_not_json() -> None:
    value = {"text": "é", "n": [1, 2]}
    assert json_encoded_size(value, max_depth=2) == len(
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    )
    bad_values: list[dict[str, Any]] = [{"x": float("nan")}, {"x": object()}, {"x": [[[]]]}, {"x": "\ud800"}]
    for bad in bad_values:
        with pytest.raises(InvalidJson):
            json_encoded_size(bad, max_depth=3)


@pytest.mark.parametrize("text", ['"\\u0000"', '{"a": ["x\\u0000y"]}', '{"\\u0000": 1}'])
def test_nul_characters_are_refused_since_postgresql_cannot_store_them(text: str) -> None:
    with pytest.raises(InvalidJson, match="NUL characters"):
        json_parse(text)
    with pytest.raises(InvalidJson, match="NUL characters"):
        json_encoded_size(json.loads(text), max_depth=3)
    assert json_parse('"\\\\u0000"') == "\\u0000"  # An escaped backslash, then text: no NUL.


@pytest.mark.parametrize("text", ['"\\ud800"', '{"\\udfff": 1}', '["a\\udc00\\ud800b"]', b'["\\ud800"]'])
def test_lone_surrogates_are_refused_since_no_utf8_can_carry_them(text: str | bytes) -> None:
    with pytest.raises(InvalidJson, match=r"lone surrogate \('\\ud"):
        json_parse(text)


def test_a_surrogate_pair_is_one_character() -> None:
    assert json_parse('"\\ud83d\\ude00"') == "\U0001f600"


# Properties.

ENCODINGS = ["utf-8", "utf-16", "utf-32"]


@settings(max_examples=300)
@given(value=deep_values, limit=st.integers(min_value=0, max_value=64), ascii_only=st.booleans())
def test_json_parses_back_exactly_when_within_the_limit_and_is_refused_otherwise(
    value: Any, limit: int, ascii_only: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    if json_depth(value) <= limit:
        assert json_parse(text, max_depth=limit) == value
    else:
        with pytest.raises(InvalidJson, match=f"nested more than {limit} levels"):
            json_parse(text, max_depth=limit)


@settings(max_examples=100)
@given(value=json_values(), encoding=st.sampled_from(ENCODINGS))
def test_json_bytes_in_any_utf_encoding_parse_back(value: Any, encoding: str) -> None:
    assert json_parse(json.dumps(value, ensure_ascii=False).encode(encoding)) == value


@settings(max_examples=100)
@given(depth=st.integers(min_value=1, max_value=20_000))
def test_text_nested_at_any_depth_is_refused_past_the_limit(depth: int) -> None:
    text = nested(depth)
    if depth <= django_settings.JSON_MAX_DEPTH:
        assert json_depth(json_parse(text)) == depth
    else:
        with pytest.raises(InvalidJson, match="nested more than 32 levels"):
            json_parse(text)


@example(text='["\\ud800"]')
@example(text="9" * 400 + ".0")
@settings(max_examples=500)
@given(text=json_ish_text() | st.binary() | st.binary().map(lambda data: b"[" + data + b"]"))
def test_any_text_or_bytes_is_json_or_invalid_json(text: str | bytes) -> None:
    """Only ``InvalidJson`` is raised; what is accepted is within the limit, and round-trips through
    the server's own encoding: it can be sent to a client, who would send back the same value."""
    try:
        value = json_parse(text)
    except InvalidJson as exc:
        assert str(exc)
        return
    assert json_depth(value) <= django_settings.JSON_MAX_DEPTH
    assert json_parse(sendable(value)) == value


@example(value={"\ud800": None}, limit=1)
@settings(max_examples=300)
@given(value=python_values | deep_values, limit=st.integers(min_value=1, max_value=48))
def test_encoded_size_is_the_compact_utf8_size_or_invalid_json(value: Any, limit: int) -> None:
    try:
        size = json_encoded_size(value, max_depth=limit)
    except InvalidJson as exc:
        assert str(exc)
        return
    assert json_depth(value) <= limit
    assert size == len(sendable(value).encode())
