"""Connecting and authenticating over a real daphne (docs/protocol.md, "Connecting")."""

import asyncio
import time
import uuid
from typing import Any

import jwt
import pytest
from asgiref.sync import sync_to_async
from rest_framework_simplejwt.tokens import AccessToken
from websockets.exceptions import InvalidStatus

from notifications.services import aevent_record
from tests.servers import DaphneServer
from tests.wsclient import REFUSED_TOKENS, access_token, expired_token, retyped_token, ws_connect

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("server_log_clean")]


async def test_hello_names_the_user_and_accepts_only_the_jwt_subprotocol(daphne: DaphneServer, alice: Any) -> None:
    token = access_token(alice)
    async with ws_connect(daphne.ws_url, token, hello=False) as client:
        assert client.ws.subprotocol == "jwt"
        assert client.ws.response is not None
        assert token not in str(client.ws.response.headers)
        hello = await client.expect("hello")
    assert hello == {
        "type": "hello",
        "user": {"id": alice.pk, "username": "alice"},
        "last_seq": 0,
        "heartbeat_seconds": 60,
    }


async def test_ping_gets_pong_echoing_ref(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}
        await client.send({"type": "ping", "ref": "r-1"})
        assert await client.recv() == {"type": "pong", "ref": "r-1"}
        await client.send({"type": "ping", "ref": 7})
        assert await client.recv() == {"type": "pong", "ref": 7}


def forged_token(user: Any) -> str:
    claims = dict(AccessToken.for_user(user).payload)
    return jwt.encode(claims, "an-attacker-key-that-is-long-enough-for-hs256", algorithm="HS256")


def soon_expiring_token(user: Any) -> tuple[str, int]:
    """Return an access token and its ``exp``, which is 0.5 to 1.5 seconds away.

    JWT expiry has whole-second resolution: the token expires at the first
    whole second at least half a second away, time enough to connect and talk.
    """
    expires_at = int(time.time() + 0.5) + 1
    token = AccessToken.for_user(user)
    token["exp"] = expires_at
    return str(token), expires_at


def deactivate(user: Any) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


def delete(user: Any) -> None:
    user.delete()


USER_GONE = [pytest.param(deactivate, id="inactive"), pytest.param(delete, id="deleted")]


@pytest.mark.parametrize(
    "offer",
    [
        pytest.param(lambda user: [], id="no-subprotocols"),
        pytest.param(lambda user: ["jwt"], id="jwt-without-token"),
        pytest.param(lambda user: ["jwt", "not.a.token"], id="malformed"),
        pytest.param(lambda user: ["jwt", forged_token(user)], id="forged"),
        pytest.param(lambda user: ["jwt", access_token(user), "extra"], id="three-subprotocols"),
        pytest.param(lambda user: [access_token(user), "other"], id="token-without-jwt"),
    ],
)
async def test_bad_credentials_close_4401_before_any_frame(daphne: DaphneServer, alice: Any, offer: Any) -> None:
    async with ws_connect(daphne.ws_url, subprotocols=offer(alice), hello=False) as client:
        assert await client.first_close_code() == 4401


@pytest.mark.parametrize("make_token", REFUSED_TOKENS.values(), ids=REFUSED_TOKENS.keys())
async def test_a_signed_token_that_is_not_a_live_access_token_closes_4401_before_any_frame(
    daphne: DaphneServer, alice: Any, make_token: Any
) -> None:
    token = await sync_to_async(make_token)(alice)
    async with ws_connect(daphne.ws_url, token, hello=False) as client:
        assert await client.first_close_code() == 4401


async def test_a_retyped_token_typed_access_is_accepted(daphne: DaphneServer, alice: Any) -> None:
    """The control for the retyped tokens refused above: only their type claim is wrong."""
    async with ws_connect(daphne.ws_url, retyped_token(alice, "access"), hello=False) as client:
        assert (await client.expect("hello"))["user"]["id"] == alice.pk


@pytest.mark.parametrize("gone", USER_GONE)
async def test_a_token_of_an_inactive_or_deleted_user_closes_4401(daphne: DaphneServer, alice: Any, gone: Any) -> None:
    token = access_token(alice)
    await sync_to_async(gone)(alice)
    async with ws_connect(daphne.ws_url, token, hello=False) as client:
        assert await client.first_close_code() == 4401


async def test_token_in_url_is_never_read(daphne: DaphneServer, alice: Any) -> None:
    url = f"{daphne.ws_url}?token={access_token(alice)}&access_token={access_token(alice)}"
    async with ws_connect(url, subprotocols=[], hello=False) as client:
        assert await client.first_close_code() == 4401


# "null" is what a sandboxed iframe or a file:// page sends; file:// is what older Chromium sent.
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "file://", "http://localhost.evil.example"])
async def test_foreign_origin_is_refused_at_handshake(daphne: DaphneServer, alice: Any, origin: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(daphne.ws_url, access_token(alice), origin=origin, hello=False):
            pass
    assert refused.value.response.status_code == 403


async def test_own_origin_is_accepted(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice), origin=f"http://localhost:{daphne.port}") as client:
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


async def test_expired_token_closes_4401_unless_refreshed(daphne: DaphneServer, alice: Any) -> None:
    # All the refused tokens but the expired one outlive the short one; none may extend its connection.
    refused = [await sync_to_async(make_token)(alice) for make_token in REFUSED_TOKENS.values()]
    short, expires_at = soon_expiring_token(alice)
    async with (
        ws_connect(daphne.ws_url, short) as stale,
        ws_connect(daphne.ws_url, short) as refreshed,
        ws_connect(daphne.ws_url, short) as misrefreshed,
    ):
        await refreshed.send({"type": "auth", "token": access_token(alice)})
        ok = await refreshed.expect("auth.ok")
        assert ok["expires_at"].endswith("Z")
        for token in refused:
            await misrefreshed.send({"type": "auth", "token": token})
            assert (await misrefreshed.expect("error"))["code"] == "invalid_token"
        assert await stale.closed(timeout=3) == 4401
        assert await misrefreshed.closed(timeout=1) == 4401
        assert time.time() >= expires_at
        await refreshed.send({"type": "ping"})
        assert await refreshed.recv() == {"type": "pong"}


async def test_bad_refresh_token_is_an_error_and_keeps_the_connection(
    daphne: DaphneServer, alice: Any, bob: Any
) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await client.send({"type": "auth", "token": "garbage"})
        error = await client.expect("error")
        assert error["code"] == "invalid_token"
        await client.send({"type": "auth", "token": access_token(bob)})
        error = await client.expect("error")
        assert error == {"type": "error", "code": "invalid_token", "detail": "The token belongs to a different user."}
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


@pytest.mark.parametrize("make_token", REFUSED_TOKENS.values(), ids=REFUSED_TOKENS.keys())
async def test_auth_with_a_signed_token_that_is_not_a_live_access_token_is_invalid_token(
    daphne: DaphneServer, alice: Any, make_token: Any
) -> None:
    token = await sync_to_async(make_token)(alice)
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await client.send({"type": "auth", "token": token})
        error = await client.expect("error")
        assert error == {"type": "error", "code": "invalid_token", "detail": "The access token is invalid or expired."}
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


@pytest.mark.parametrize("gone", USER_GONE)
async def test_auth_after_the_user_is_deactivated_or_deleted_is_invalid_token(
    daphne: DaphneServer, alice: Any, gone: Any
) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        fresh = access_token(alice)
        await sync_to_async(gone)(alice)
        await client.send({"type": "auth", "token": fresh})
        error = await client.expect("error")
        assert error == {
            "type": "error",
            "code": "invalid_token",
            "detail": "The token's user does not exist or is inactive.",
        }


async def test_tokens_never_appear_in_the_server_log(daphne_factory: Any, redis_url: str, alice: Any, bob: Any) -> None:
    # Everything the server can log: debug level, daphne's access log and
    # its own debug output.
    server = daphne_factory(redis_url=redis_url, LOG_LEVEL="DEBUG", args=("-v", "2"))
    good, other, expired = access_token(alice), access_token(bob), expired_token(alice)
    async with ws_connect(server.ws_url, good) as client:
        await client.send({"type": "auth", "token": other})
        await client.expect("error")
        await client.send({"type": "auth", "token": expired})
        await client.expect("error")
        await client.send({"type": "auth", "token": good})
        await client.expect("auth.ok")
    async with ws_connect(server.ws_url, expired, hello=False) as refused:
        assert await refused.first_close_code() == 4401
    async with ws_connect(f"{server.ws_url}?token={good}", subprotocols=[], hello=False) as refused:
        assert await refused.first_close_code() == 4401
    server.stop()
    log = server.log()
    assert "WSCONNECT" in log  # The access log was on...
    for token in (good, other, expired):
        for part in token.split("."):  # ...and holds no token, nor any part of one.
            assert part not in log


@pytest.mark.parametrize("gone", USER_GONE)
async def test_an_open_connection_of_a_user_deactivated_or_deleted_closes_4401_at_its_next_heartbeat(
    daphne_beating: DaphneServer, alice: Any, bob: Any, gone: Any
) -> None:
    async with (
        ws_connect(daphne_beating.ws_url, access_token(alice)) as leaving,
        ws_connect(daphne_beating.ws_url, access_token(bob)) as staying,
    ):
        await sync_to_async(gone)(alice)
        assert await leaving.closed() == 4401
        await staying.expect("heartbeat")  # Bob's connection beats on.


async def test_connects_at_once_each_get_their_own_user_and_newest_seq(daphne: DaphneServer, make_user: Any) -> None:
    """Connects at the same moment share one read of users and stream heads: none may get another's."""
    users = [await sync_to_async(make_user)() for _ in range(12)]
    for count, user in enumerate(users):
        for step in range(count):
            await aevent_record(
                user_id=user.pk, event="agent_thinking", run_id=uuid.uuid4(), agent="demo", data={"step": step}
            )
    contexts = [ws_connect(daphne.ws_url, access_token(user), hello=False) for user in users * 3]
    clients = await asyncio.gather(*(context.__aenter__() for context in contexts))
    try:
        hellos = await asyncio.gather(*(client.expect("hello") for client in clients))
    finally:
        await asyncio.gather(*(context.__aexit__(None, None, None) for context in contexts))
    expected = [(user.pk, user.username, count) for count, user in enumerate(users)] * 3
    assert [(h["user"]["id"], h["user"]["username"], h["last_seq"]) for h in hellos] == expected
