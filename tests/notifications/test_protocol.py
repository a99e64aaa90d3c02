"""notifications.protocol: parsing client messages."""

import pytest

from notifications.exceptions import ProtocolError
from notifications.protocol import Ack, Auth, Ping, Resume, client_message_parse


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
