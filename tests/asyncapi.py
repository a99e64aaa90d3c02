"""docs/asyncapi.yaml as checks on the frames the tests receive and send.

tests/wsclient.py (and the browser tests' socket recorder) run every frame
through ``contract()``: a server frame that the document does not describe,
or that breaks its schema, fails the test that received it.
"""

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
DOCUMENT_URI = "urn:docs:asyncapi"
CHANNEL = "notifications"


class FrameMismatch(AssertionError):
    """A frame the document does not describe, or one that breaks its message's schema."""


def _pointer_get(document: Mapping[str, Any], ref: str) -> Any:
    """The node a local reference (``#/a/b``) points at."""
    if not ref.startswith("#/"):
        raise ValueError(f"Only local references are supported, got {ref!r}")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _ref_final(document: Mapping[str, Any], ref: str) -> tuple[str, Any]:
    """Follow ``ref`` through nodes that are themselves references; return the last ref and its node."""
    node = _pointer_get(document, ref)
    while isinstance(node, Mapping) and "$ref" in node:
        ref = str(node["$ref"])
        node = _pointer_get(document, ref)
    return ref, node


def _message_schema_ref(document: Mapping[str, Any], message_ref: Mapping[str, Any]) -> tuple[str, str]:
    """The frame ``type`` a message reference stands for, and the reference of its payload schema."""
    _, message = _ref_final(document, str(message_ref["$ref"]))
    payload_ref, payload = _ref_final(document, str(message["payload"]["$ref"]))
    return str(payload["properties"]["type"]["const"]), payload_ref


@dataclass(frozen=True)
class Contract:
    """The document's server and client messages (by frame ``type``) and its close codes."""

    server: Mapping[str, Draft7Validator]
    client: Mapping[str, Draft7Validator]
    close_codes: frozenset[int]
    reason_codes: frozenset[int]
    reason: Draft7Validator

    def server_frame_check(self, frame: Any) -> None:
        """Raise ``FrameMismatch`` unless ``frame`` is one of the server frames, as described."""
        _check(self.server, frame, "server")

    def client_frame_check(self, frame: Any) -> None:
        """Raise ``FrameMismatch`` unless ``frame`` is one of the client messages, as described."""
        _check(self.client, frame, "client")

    def close_check(self, code: int | None, reason: str) -> None:
        """Raise ``FrameMismatch`` for an undocumented close code or a 1001/4503 reason that is not a delay."""
        if code is None:
            return  # No close frame at all (the TCP connection dropped): nothing to check.
        if code not in self.close_codes:
            raise FrameMismatch(f"close code {code} is not in docs/asyncapi.yaml ({sorted(self.close_codes)})")
        if code in self.reason_codes:
            try:
                parsed = json.loads(reason)
            except ValueError:
                raise FrameMismatch(f"close {code} reason {reason!r} is not JSON") from None
            _errors_raise(self.reason, parsed, f"close {code} reason")


def _check(validators: Mapping[str, Draft7Validator], frame: Any, side: str) -> None:
    kind = frame.get("type") if isinstance(frame, dict) else None
    validator = validators.get(kind) if isinstance(kind, str) else None
    if validator is None:
        raise FrameMismatch(f"{side} frame of no documented type ({sorted(validators)}): {frame!r:.300}")
    _errors_raise(validator, frame, f"{side} frame {kind!r}")


def _errors_raise(validator: Draft7Validator, value: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(value), key=lambda error: list(error.absolute_path))
    if errors:
        details = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)
        raise FrameMismatch(f"{what} does not match docs/asyncapi.yaml: {details:.500} in {value!r:.300}")


def document_load(path: Path = DOCUMENT_PATH) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def contract_from(document: dict[str, Any]) -> Contract:
    """Build the checks from an AsyncAPI document: ``send`` operations and replies are the server's frames."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT7)
    )

    def validator(pointer: str) -> Draft7Validator:
        return Draft7Validator({"$ref": DOCUMENT_URI + pointer}, registry=registry)

    server: dict[str, Draft7Validator] = {}
    client: dict[str, Draft7Validator] = {}
    for operation in document["operations"].values():
        sent_by_server = operation["action"] == "send"
        for message in operation["messages"]:
            kind, pointer = _message_schema_ref(document, message)
            (server if sent_by_server else client)[kind] = validator(pointer)
        for message in operation.get("reply", {}).get("messages", []):
            kind, pointer = _message_schema_ref(document, message)
            server[kind] = validator(pointer)
    channel = document["channels"][CHANNEL]
    reason = channel["x-close-reason"]
    return Contract(
        server=server,
        client=client,
        close_codes=frozenset(int(code) for code in channel["x-close-codes"]),
        reason_codes=frozenset(int(code) for code in reason["codes"]),
        reason=validator(str(reason["schema"]["$ref"])),
    )


@functools.cache
def contract() -> Contract:
    """The checks of docs/asyncapi.yaml, loaded once per test process."""
    return contract_from(document_load())
