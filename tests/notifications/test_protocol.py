"""notifications.protocol: parsing client messages."""

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifications.exceptions import ProtocolError
from notifications.protocol import BASE_PARSERS, Ack, Auth, ClientMessage, Ping, Resume, client_message_parse
from tests.hostile import BASE_TYPES, frames_text, parsed_or_refused, sendable, shaped_messages, valid_messages


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "ping"}', Ping()),
        ('{"type": "ping", "ref": "a"}', Ping(ref="a")),
        ('{"type": "ping", "ref": 0}', Ping(ref=0)),
        ('{"type": "resume", "after": 0}', Resume(after=0)),
        ('{"type": "ack", "seq": 12}', Ack(seq=12)),
        ('{"type": "auth", "token": "t"}', Auth(token="t")),
    ],
)
def test_valid_messages_parse(text: str, message: object) -> None:
    assert client_message_parse(text) == message


def test_auth_repr_never_shows_the_token() -> None:
    assert "secret-token" not in repr(Auth(token="secret-token"))


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "invalid_json"),
        ("nul", "invalid_json"),
        ("null", "invalid_message"),
        ('{"type": null}', "unknown_type"),
        ('{"type": "PING"}', "unknown_type"),
        ('{"type": "ping", "ref": true}', "invalid_message"),
        ('{"type": "ping", "ref": "' + "r" * 129 + '"}', "invalid_message"),
        ('{"type": "ack", "seq": 1, "extra": 1}', "invalid_message"),
        ('{"type": "auth", "token": 5}', "invalid_message"),
        ('{"type": "auth", "token": "' + "t" * 4097 + '"}', "invalid_message"),
        ('{"type": "ping", "ref": "\\ud800"}', "invalid_json"),
        ('{"type": "ping", "\\udfff": 1}', "invalid_json"),
    ],
)
def test_invalid_messages_raise_with_a_code(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as error:
        client_message_parse(text)
    assert error.value.code == code
    assert error.value.detail


def test_unknown_type_detail_is_truncated() -> None:
    with pytest.raises(ProtocolError) as error:
        client_message_parse('{"type": "' + "x" * 1000 + '"}')
    assert len(error.value.detail) < 100


# Properties: whatever a client sends, the parser answers as documented.

BASE_MESSAGES = (Ping, Resume, Ack, Auth)


def base_frame(message: ClientMessage) -> dict[str, Any]:
    """The frame a client would send for ``message``."""
    match message:
        case Ping(ref=None):
            return {"type": "ping"}
        case Ping(ref=ref):
            return {"type": "ping", "ref": ref}
        case Resume(after=after):
            return {"type": "resume", "after": after}
        case Ack(seq=seq):
            return {"type": "ack", "seq": seq}
        case Auth(token=token):
            return {"type": "auth", "token": token}
    raise AssertionError(message)


@example(text='{"type": "ping", "\\ud800": ""}')
@settings(max_examples=500)
@given(text=frames_text(BASE_TYPES))
def test_any_text_is_a_message_or_a_documented_error(text: str) -> None:
    parsed_or_refused(text, BASE_PARSERS, BASE_MESSAGES)


@settings(max_examples=200)
@given(frame=valid_messages(BASE_TYPES))
def test_valid_messages_round_trip(frame: dict[str, Any]) -> None:
    message = client_message_parse(json.dumps(frame))
    assert base_frame(message) == frame


@example(frame={"type": "ping", "ref": "\ud800"}, ascii_only=True)
@settings(max_examples=300)
@given(frame=shaped_messages(BASE_TYPES) | valid_messages(BASE_TYPES), ascii_only=st.booleans())
def test_an_accepted_frame_can_be_sent_back_and_parses_to_the_same_message(
    frame: dict[str, Any], ascii_only: bool
) -> None:
    """What the parser accepts, the server may echo (a ping's ref): it must encode, and mean the same."""
    message = parsed_or_refused(json.dumps(frame, ensure_ascii=ascii_only), BASE_PARSERS, BASE_MESSAGES)
    if message is not None:
        assert client_message_parse(sendable(base_frame(message))) == message
