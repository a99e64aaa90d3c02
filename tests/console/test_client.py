"""The reference client (notifications/static/notifications/client.js) against a scripted socket.

The module runs in Chromium as served by the real server; only the WebSocket
is replaced, so each test plays the server's side of protocol orderings that
a live server produces only by chance (a live event overtaking a resume, a
refused resume, a reset log).
"""

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.servers import DaphneServer

FAKE_SOCKET = """
window.FakeSocket = class FakeSocket {
  static OPEN = 1;
  static instances = [];
  constructor(url, protocols) {
    Object.assign(this, { url, protocols, sent: [], readyState: 1 });
    FakeSocket.instances.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  frame(object) { this.onmessage({ data: JSON.stringify(object) }); }
  shut(code, reason = "") { this.readyState = 3; this.onclose({ code, reason }); }
};
window.WebSocket = window.FakeSocket;
// Every timer's delay, by its id: which delay the client chose for what.
window.timerDelays = new Map();
const realSetTimeout = window.setTimeout;
window.setTimeout = (fn, ms, ...args) => {
  const id = realSetTimeout(fn, ms, ...args);
  window.timerDelays.set(id, ms);
  return id;
};
window.tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));
window.ev = (seq) => ({ type: "event", seq, event: "agent_thinking", run_id: "r", agent: "a", data: {} });
window.hello = (lastSeq) => ({
  type: "hello", user: { id: 1, username: "u" }, last_seq: lastSeq, heartbeat_seconds: 25,
});
"""


@pytest.fixture
def page(browser: Browser, console_server: DaphneServer) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(FAKE_SOCKET)
    # Any page of the origin will do: the module is imported from it.
    page.goto(f"{console_server.http_url}/healthz")
    yield page
    context.close()


def play(page: Page, script: str) -> Any:
    """Run ``script`` with a started client in scope (``client``, ``seen``, ``gaps``, ``tokens``)."""
    return page.evaluate(
        """async ({ script }) => {
          const { NotificationsClient } = await import("/static/notifications/client.js");
          const seen = [], gaps = [], tokens = [], states = [];
          const make = (options) => new NotificationsClient({
            url: "ws://test/", getToken: async (o) => { tokens.push(o); return "token"; },
            onEvent: (f) => seen.push(f.seq), onGap: () => gaps.push(true), onState: (s) => states.push(s),
            ackDelayMs: 0, random: () => 0, ...options,
          });
          const body = new Function("make", "seen", "gaps", "tokens", "states", `return (async () => {${script}})()`);
          return await body(make, seen, gaps, tokens, states);
        }""",
        {"script": script},
    )


def test_a_live_event_that_overtakes_the_resume_does_not_hide_the_replay(page: Page) -> None:
    result = play(
        page,
        """
        const client = make({ after: 5 });
        client.start(); await tick();
        const ws = FakeSocket.instances[0];
        ws.frame(hello(10));
        ws.frame(ev(11));                         // live, sent before the server read our resume
        for (let seq = 6; seq <= 11; seq++) ws.frame(ev(seq));
        ws.frame({ type: "resumed", after: 5, last_seq: 11, count: 6 });
        ws.frame(ev(12));
        await tick(5);
        return { seen, sent: ws.sent, gaps };
        """,
    )
    assert result["seen"] == [6, 7, 8, 9, 10, 11, 12]
    assert result["sent"][0] == {"type": "resume", "after": 5}
    assert result["sent"][-1] == {"type": "ack", "seq": 12}
    assert result["gaps"] == []


def test_a_refused_resume_reports_a_gap_and_goes_on_live(page: Page) -> None:
    result = play(
        page,
        """
        const client = make({ after: 5 });
        client.start(); await tick();
        const ws = FakeSocket.instances[0];
        ws.frame(hello(20000));
        ws.frame(ev(20001));
        ws.frame({ type: "error", code: "invalid_message", detail: "Cannot resume after 5: too many." });
        ws.frame(ev(20002));
        return { seen, gaps, last: client.lastSeq };
        """,
    )
    assert result == {"seen": [20001, 20002], "gaps": [True], "last": 20002}


def test_no_resume_when_nothing_was_missed_and_duplicates_are_dropped_across_reconnects(page: Page) -> None:
    result = play(
        page,
        """
        const client = make({});
        client.start(); await tick();
        const first = FakeSocket.instances[0];
        first.frame(hello(0));
        for (const seq of [1, 2, 3]) first.frame(ev(seq));
        first.shut(1001);                         // server restart
        await tick(5);
        const second = FakeSocket.instances[1];
        second.frame(hello(3));                   // nothing new: no resume needed
        second.frame(ev(3));                      // a duplicate from the layer
        second.frame(ev(4));
        second.shut(1006);
        await tick(5);
        const third = FakeSocket.instances[2];
        third.frame(hello(6));
        for (const seq of [5, 6]) third.frame(ev(seq));
        third.frame({ type: "resumed", after: 4, last_seq: 6, count: 2 });
        return { seen, states, resumes: FakeSocket.instances.map((ws) => ws.sent.filter((m) => m.type === "resume")) };
        """,
    )
    assert result["seen"] == [1, 2, 3, 4, 5, 6]
    assert result["resumes"] == [[], [], [{"type": "resume", "after": 4}]]
    assert result["states"] == ["connecting", "live", "reconnecting", "live", "reconnecting", "live"]


def test_after_a_4401_the_next_connection_asks_for_a_fresh_token(page: Page) -> None:
    result = play(
        page,
        """
        const client = make({});
        client.start(); await tick();
        FakeSocket.instances[0].shut(4401);
        await tick(5);
        return { tokens, sockets: FakeSocket.instances.map((ws) => ws.protocols) };
        """,
    )
    assert result["tokens"] == [{"fresh": False}, {"fresh": True}]
    assert result["sockets"] == [["jwt", "token"], ["jwt", "token"]]


def test_a_log_behind_the_client_is_a_gap_and_acks_restart_from_it(page: Page) -> None:
    result = play(
        page,
        """
        const client = make({ after: 50 });
        client.start(); await tick();
        const ws = FakeSocket.instances[0];
        ws.frame(hello(3));                       // the log was reset
        ws.frame(ev(4));
        await tick(5);
        return { seen, gaps, sent: ws.sent };
        """,
    )
    assert result == {"seen": [4], "gaps": [True], "sent": [{"type": "ack", "seq": 4}]}


def test_stop_while_a_token_is_on_its_way_opens_no_socket(page: Page) -> None:
    result = play(
        page,
        """
        let release;
        const client = make({ getToken: () => new Promise((resolve) => { release = resolve; }) });
        client.start();
        client.stop();
        release("token");
        await tick(5);
        return { sockets: FakeSocket.instances.length, state: client.state };
        """,
    )
    assert result == {"sockets": 0, "state": "signed-out"}


def test_a_truncated_replay_is_passed_on_and_reported_as_a_gap(page: Page) -> None:
    result = play(
        page,
        """
        const client = make({ after: 2 });
        client.start(); await tick();
        const ws = FakeSocket.instances[0];
        ws.frame(hello(40));
        for (const seq of [31, 40]) ws.frame(ev(seq));     // 3..30 fell out of the retention window
        ws.frame({ type: "resumed", after: 2, last_seq: 40, count: 2, truncated: true });
        return { seen, gaps };
        """,
    )
    assert result == {"seen": [31, 40], "gaps": [True]}


@pytest.mark.parametrize(
    ("code", "reason", "delay_ms"),
    [
        pytest.param(1001, '{"retry_after":0.3}', 300, id="stopping-server"),
        pytest.param(4503, '{"retry_after":2.5}', 2500, id="busy-server"),
        pytest.param(1001, '{"retry_after":1e6}', 30000, id="capped-at-the-longest-backoff"),
        # No usable delay: the client's own backoff (random() = 0.5 of the first 500 ms ceiling).
        pytest.param(1001, "", 250, id="no-reason"),
        pytest.param(1001, "going away", 250, id="not-json"),
        pytest.param(4503, '{"retry_after":-1}', 250, id="negative"),
        pytest.param(4503, '{"retry_after":"5"}', 250, id="not-a-number"),
    ],
)
def test_the_client_reconnects_after_the_delay_the_server_gives(
    page: Page, code: int, reason: str, delay_ms: int
) -> None:
    result = play(
        page,
        f"""
        const client = make({{ random: () => 0.5 }});
        client.start(); await tick();
        FakeSocket.instances[0].frame(hello(0));
        FakeSocket.instances[0].shut({code}, {reason!r});
        return {{ delay: timerDelays.get(client.timers.reconnect), sockets: FakeSocket.instances.length }};
        """,
    )
    assert result == {"delay": delay_ms, "sockets": 1}
