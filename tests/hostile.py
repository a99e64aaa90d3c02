"""Hostile input for property tests: Hypothesis strategies, and the checks their parsers share.

JSON values, JSON-ish text, Python values that are not JSON, and protocol
messages valid or mutated. Used by the tests of the parser, the JSON limits,
event validation, run input and the WebSocket fuzz run.
"""

import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from notifications.exceptions import ProtocolError
from notifications.frames import encode
from notifications.protocol import Parser, client_message_parse


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Draw from each strategy in proportion to its weight (shrinking towards the first)."""
    total = sum(weight for weight, _ in choices)

    def pick(number: int) -> st.SearchStrategy[Any]:
        for weight, strategy in choices:
            if number < weight:
                return strategy
            number -= weight
        raise AssertionError(number)

    return st.integers(min_value=0, max_value=total - 1).flatmap(pick)


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Draw from ``usual`` three times in four, else from ``other``: reach the checks behind the first one."""
    return weighted((3, usual), (1, other))


# Characters a client can send, and the ones that break naive code: lone
# surrogates (only reachable through a JSON escape), NUL, a BOM, JSON's own
# metacharacters, and line separators that are not JSON whitespace.
TRICKY_CHARACTERS = ["\x00", "\ufeff", "\u2028", '"', "\\", "\ud800", "\udfff", "\U0010ffff", "é"]
# What the service accepts as text in JSON: any character but NUL, which it refuses (PostgreSQL
# cannot store it; docs/protocol.md, invalid_json).
valid_characters = st.characters(codec="utf-8", exclude_characters="\x00")
valid_text = st.text(valid_characters, max_size=20)
hostile_characters = weighted(
    (6, st.characters()), (3, st.sampled_from(TRICKY_CHARACTERS)), (1, st.characters(codec=None, categories=["Cs"]))
)
# (st.text would drop the surrogates: it keeps to characters UTF-8 can encode.)
hostile_text = st.text(max_size=20) | st.lists(hostile_characters, max_size=20).map("".join)


# Python's json refuses to print or read ints of more than 4300 digits.
INT_DIGITS_MAX = 4300
big_ints = st.integers(min_value=1, max_value=INT_DIGITS_MAX - 1).map(lambda digits: 10**digits - 1)
json_ints = st.integers() | big_ints | big_ints.map(lambda value: -value)
json_floats = st.floats(allow_nan=False, allow_infinity=False)


def json_values(*, text: st.SearchStrategy[str] = valid_text, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value, as Python's json reads it (lists, dicts with str keys, finite floats)."""
    scalars = st.none() | st.booleans() | json_ints | json_floats | text
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
        max_leaves=max_leaves,
    )


def nested(value: Any, depth: int, *, key: str = "k") -> Any:
    """Wrap ``value`` in ``depth`` alternating lists and objects, without recursion."""
    for level in range(depth):
        value = [value] if level % 2 else {key: value}
    return value


def json_depth(value: Any) -> int:
    """The reference depth: containers count one level each (``{"a": [1]}`` is 2); scalars none."""
    if isinstance(value, dict):
        return 1 + max((json_depth(child) for child in value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max((json_depth(child) for child in value), default=0)
    return 0


def strings_in(value: Any) -> list[str]:
    """Every string in ``value``, dict keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, child in value.items() for text in strings_in(key) + strings_in(child)]
    if isinstance(value, list | tuple):
        return [text for child in value for text in strings_in(child)]
    return []


deep_values = st.builds(nested, json_values(max_leaves=4), st.integers(min_value=0, max_value=60))


class Opaque:
    """An object with no JSON form."""

    def __repr__(self) -> str:
        return "Opaque()"


# Python values that are not JSON, or not JSON as they stand.
non_json_scalars = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.builds(Opaque),
    st.binary(max_size=8),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.just(INT_DIGITS_MAX).map(lambda digits: 10**digits),  # (too long for repr, so not st.just)
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.text(max_size=3), max_size=3),
    st.uuids(),
    st.dates(),
)
python_keys = hostile_text | st.integers() | st.none() | st.booleans() | json_floats | st.tuples(st.integers())
python_values = st.recursive(
    st.none() | st.booleans() | json_ints | json_floats | hostile_text | non_json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(python_keys, children, max_size=4),
    ),
    max_leaves=12,
)


def big_strings(*, max_size: int) -> st.SearchStrategy[str]:
    """One repeated character up to ``max_size`` long: large without a large Hypothesis buffer."""
    return st.builds(
        lambda char, size: char * size, st.sampled_from(["x", "é", "\U0001f600"]), st.integers(0, max_size)
    )


def json_ish_text() -> st.SearchStrategy[str]:
    """Text that is JSON, nearly JSON, or JSON with the tokens parsers trip on."""
    documents = json_values(text=hostile_text).map(json.dumps)
    raw_documents = json_values().map(lambda value: json.dumps(value, ensure_ascii=False))
    tokens = st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e999",
            "-0",
            "1.0e+",
            "0x10",
            "01",
            '"\\ud800"',
            '"\\udc00\\ud800"',
            '"\\u0000"',
            "\ufeff",
        ]
    )
    huge_number = st.integers(min_value=4000, max_value=6000).map(lambda digits: "9" * digits)
    deep = st.integers(min_value=0, max_value=3_000).map(lambda depth: "[" * depth + "]" * depth)
    deep_objects = st.integers(min_value=0, max_value=100).map(lambda depth: '{"a":' * depth + "1" + "}" * depth)

    def spliced(document: str, token: str, where: int) -> str:
        at = where % (len(document) + 1)
        return document[:at] + token + document[at:]

    return st.one_of(
        documents,
        raw_documents,
        st.builds(spliced, documents, tokens | huge_number, st.integers(min_value=0)),
        st.builds(lambda document, cut: document[: cut % (len(document) + 1)], documents, st.integers(min_value=0)),
        st.builds(lambda document, token: f"[{document}, {token}]", documents, tokens | huge_number),
        deep,
        deep_objects,
        st.lists(hostile_characters).map("".join),
    )


# Messages of the WebSocket protocol: valid ones for round trips, and shaped-but-mutated ones.
BASE_TYPES = ["ping", "resume", "ack", "auth"]
RUN_TYPES = ["run.start", "run.cancel"]
FIELDS = {
    "ping": ["ref"],
    "resume": ["after"],
    "ack": ["seq"],
    "auth": ["token"],
    "run.start": ["agent", "input", "timeout"],
    "run.cancel": ["run_id"],
}
seqs = st.one_of(
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=10).map(lambda digits: 10 ** (digits * 100)),
)

_valid = {
    "ping": st.fixed_dictionaries({"type": st.just("ping")}, optional={"ref": valid_text | json_ints}),
    "resume": st.fixed_dictionaries({"type": st.just("resume"), "after": seqs}),
    "ack": st.fixed_dictionaries({"type": st.just("ack"), "seq": seqs}),
    "auth": st.fixed_dictionaries(
        {"type": st.just("auth"), "token": st.text(valid_characters, min_size=1, max_size=4096)}
    ),
    "run.start": st.fixed_dictionaries(
        {"type": st.just("run.start"), "agent": st.text(valid_characters, min_size=1, max_size=20)},
        optional={"input": json_values(), "timeout": json_values(max_leaves=2)},
    ),
    "run.cancel": st.fixed_dictionaries({"type": st.just("run.cancel"), "run_id": st.uuids().map(str)}),
}


def valid_messages(kinds: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Frames of these types that follow docs/protocol.md, section 4 (as far as the parser checks)."""
    return st.one_of(*(_valid[kind] for kind in kinds))


field_values = st.one_of(
    json_values(text=hostile_text, max_leaves=4),
    st.sampled_from([None, True, False, 0, -1, 1.5, "", "demo", "calculator", 10**30, str(uuid.UUID(int=0))]),
    big_strings(max_size=5_000),
)


def shaped_messages(kinds: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Frames of a known type whose fields (some, all or none) hold anything at all."""
    return st.sampled_from(kinds).flatmap(
        lambda kind: st.fixed_dictionaries({"type": st.just(kind)}, optional=dict.fromkeys(FIELDS[kind], field_values))
    )


message_kinds = st.sampled_from([*BASE_TYPES, *RUN_TYPES, "PING", "", "run.", "subscribe"]) | field_values
field_names = st.sampled_from([name for names in FIELDS.values() for name in names] + ["extra"]) | hostile_text
mutated_messages = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    message_kinds,
    st.dictionaries(field_names.filter(lambda key: key != "type"), field_values, max_size=4),
)


def odd_messages(kinds: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Frames of a known type whose fields hold odd text, or have odd names (the server may echo either)."""
    own_fields = st.sampled_from(kinds).flatmap(
        lambda kind: st.fixed_dictionaries({"type": st.just(kind), **dict.fromkeys(FIELDS[kind], hostile_text)})
    )
    extra_fields = st.builds(
        lambda kind, fields: {"type": kind, **fields},
        st.sampled_from(kinds),
        st.dictionaries(field_names.filter(lambda key: key != "type"), hostile_text, min_size=1, max_size=2),
    )
    return own_fields | extra_fields


def frames_text(kinds: list[str]) -> st.SearchStrategy[str]:
    """Any text a client could send: mostly messages (shaped, odd, mutated or valid), else JSON-ish text."""
    messages = weighted(
        (2, odd_messages(kinds)), (2, shaped_messages(kinds)), (1, mutated_messages), (1, valid_messages(kinds))
    )
    encoded = messages.map(json.dumps) | messages.map(lambda frame: json.dumps(frame, ensure_ascii=False))
    return weighted((3, encoded), (1, json_ish_text()))


# What a parser may refuse a frame with (docs/protocol.md, section 7), and how long its detail may be.
PARSE_ERROR_CODES = {"invalid_json", "invalid_message", "unknown_type"}
DETAIL_MAX_CHARS = 1000


def parsed_or_refused(text: str, parsers: Mapping[str, Parser], message_classes: tuple[type, ...]) -> Any:
    """Parse ``text``; return the message, or None after checking the refusal is a documented one.

    Any exception other than ``ProtocolError`` propagates and fails the property.
    """
    try:
        message = client_message_parse(text, parsers)
    except ProtocolError as exc:
        assert exc.code in PARSE_ERROR_CODES, exc.code
        assert isinstance(exc.detail, str) and exc.detail, exc.detail
        assert len(exc.detail) <= DETAIL_MAX_CHARS, len(exc.detail)
        exc.detail.encode()  # It is sent to the client in an error frame.
        return None
    assert isinstance(message, message_classes), message
    return message


def sendable(frame: Any) -> str:
    """Encode a frame as the server does, and check that it can go out as UTF-8 text."""
    text = encode(frame)
    text.encode()
    return text
