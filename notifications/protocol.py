"""Parse and validate client-to-server WebSocket messages (docs/protocol.md)."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import InvalidJson, ProtocolError
from .jsonlimits import json_parse

REF_MAX_CHARS = 128
TOKEN_MAX_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | int | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    after: int


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Auth:
    token: str

    def __repr__(self) -> str:
        return "Auth(token=<redacted>)"


ClientMessage = Ping | Resume | Ack | Auth
Parser = Callable[[dict[str, Any]], Any]


def client_message_parse(text: str, parsers: Mapping[str, Parser] | None = None) -> Any:
    """Turn one text frame into a typed message, or raise ``ProtocolError``.

    ``parsers`` maps each message type to the function that validates its
    fields; it defaults to the base protocol's four types.
    """
    try:
        content = json_parse(text)
    except InvalidJson as exc:
        raise ProtocolError("invalid_json", str(exc)) from None
    if not isinstance(content, dict):
        raise ProtocolError("invalid_message", "A message must be a JSON object.")
    kind = content.get("type")
    if kind is None:
        raise ProtocolError("unknown_type", 'A message must have a "type" field.')
    if not isinstance(kind, str):
        raise ProtocolError("unknown_type", '"type" must be a string.')
    parser = (BASE_PARSERS if parsers is None else parsers).get(kind)
    if parser is None:
        raise ProtocolError("unknown_type", f"Unknown message type {kind[:64]!r}.")
    fields = {key: value for key, value in content.items() if key != "type"}
    return parser(fields)


def fields_only(fields: dict[str, Any], kind: str, allowed: set[str]) -> None:
    extra = sorted(set(fields) - allowed)
    if extra:
        raise ProtocolError("invalid_message", f"Unexpected field(s) for {kind}: {', '.join(extra)[:200]}.")


def seq_field(fields: dict[str, Any], kind: str, name: str) -> int:
    if name not in fields:
        raise ProtocolError("invalid_message", f'{kind} needs "{name}", a non-negative integer.')
    value = fields[name]
    # bool is an int in Python but never a seq.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError("invalid_message", f'"{name}" must be a non-negative integer.')
    return int(value)


def _ping(fields: dict[str, Any]) -> Ping:
    fields_only(fields, "ping", {"ref"})
    ref = fields.get("ref")
    if ref is None:
        return Ping()
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        raise ProtocolError("invalid_message", '"ref" must be a string or an integer.')
    if isinstance(ref, str) and len(ref) > REF_MAX_CHARS:
        raise ProtocolError("invalid_message", f'"ref" must be at most {REF_MAX_CHARS} characters.')
    return Ping(ref=ref)


def _resume(fields: dict[str, Any]) -> Resume:
    fields_only(fields, "resume", {"after"})
    return Resume(after=seq_field(fields, "resume", "after"))


def _ack(fields: dict[str, Any]) -> Ack:
    fields_only(fields, "ack", {"seq"})
    return Ack(seq=seq_field(fields, "ack", "seq"))


def _auth(fields: dict[str, Any]) -> Auth:
    fields_only(fields, "auth", {"token"})
    token = fields.get("token")
    if not isinstance(token, str) or not token or len(token) > TOKEN_MAX_CHARS:
        raise ProtocolError("invalid_message", 'auth needs "token", a non-empty string.')
    return Auth(token=token)


BASE_PARSERS: Mapping[str, Parser] = {
    "ping": _ping,
    "resume": _resume,
    "ack": _ack,
    "auth": _auth,
}
