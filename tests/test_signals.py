"""config.signals: real SIGINT and SIGTERM sent to this process, counted, and the previous handlers put back."""

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from config.signals import STOP_SIGNALS, stop_signals_handled
from tests.servers import ROOT

WAIT_SECONDS = 2.0


class Previous:
    """A Python-level handler for both signals, as a command's caller may have installed; it records what it gets."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.got = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        self.got.set()


@pytest.fixture
def previous() -> Iterator[Previous]:
    """Install ``Previous`` for SIGINT and SIGTERM (so that a stray signal cannot stop the tests); restore after."""
    handler = Previous()
    originals = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    yield handler
    for signum, original in originals.items():
        signal.signal(signum, original)


def kill_self(signum: signal.Signals) -> None:
    os.kill(os.getpid(), signum)


async def test_on_the_loop_each_signal_is_counted_and_handled_on_the_loop(previous: Previous) -> None:
    loop = asyncio.get_running_loop()
    received: list[tuple[signal.Signals, int, bool]] = []
    got = asyncio.Event()

    def on_signal(signum: signal.Signals, count: int) -> None:
        received.append((signum, count, asyncio.get_running_loop() is loop))
        got.set()

    with stop_signals_handled(on_signal):
        for signum in (signal.SIGTERM, signal.SIGINT):
            got.clear()
            kill_self(signum)
            await asyncio.wait_for(got.wait(), timeout=WAIT_SECONDS)
    assert received == [(signal.SIGTERM, 1, True), (signal.SIGINT, 2, True)]
    assert previous.received == []


async def test_after_a_block_on_the_loop_the_previous_handlers_are_back(previous: Previous) -> None:
    counts: list[int] = []
    with stop_signals_handled(lambda signum, count: counts.append(count)):
        assert signal.getsignal(signal.SIGTERM) is not previous
    assert all(signal.getsignal(signum) is previous for signum in STOP_SIGNALS)
    kill_self(signal.SIGTERM)
    async with asyncio.timeout(WAIT_SECONDS):
        while not previous.got.is_set():  # noqa: ASYNC110  (a Python handler runs between bytecodes: poll)
            await asyncio.sleep(0.01)
    assert previous.received == [signal.SIGTERM]
    assert counts == []


def test_without_a_loop_python_handlers_count_the_signals_and_the_previous_ones_are_back(previous: Previous) -> None:
    received: list[tuple[signal.Signals, int]] = []
    second = threading.Event()

    def on_signal(signum: signal.Signals, count: int) -> None:
        received.append((signum, count))
        if count == 2:
            second.set()

    with stop_signals_handled(on_signal):
        kill_self(signal.SIGINT)
        kill_self(signal.SIGTERM)
        assert second.wait(timeout=WAIT_SECONDS)
    assert received == [(signal.SIGINT, 1), (signal.SIGTERM, 2)]
    assert all(signal.getsignal(signum) is previous for signum in STOP_SIGNALS)
    kill_self(signal.SIGINT)
    assert previous.got.wait(timeout=WAIT_SECONDS)
    assert previous.received == [signal.SIGINT]


@pytest.mark.parametrize("on_loop", [False, True])
def test_a_block_that_raises_still_puts_back_a_handler_that_ignores(previous: Previous, on_loop: bool) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # The fixture restores the original.

    def block() -> None:
        with stop_signals_handled(lambda signum, count: None):
            raise RuntimeError("the command failed")

    async def on_a_loop() -> None:
        block()

    with pytest.raises(RuntimeError, match="the command failed"):
        asyncio.run(on_a_loop()) if on_loop else block()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is previous


def test_only_the_helper_installs_signal_handlers() -> None:
    installers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("config", "notifications", "agents", "console")
        for path in (ROOT / folder).rglob("*.py")
        if any(call in path.read_text() for call in ("add_signal_handler(", "signal.signal("))
    )
    assert installers == ["config/signals.py"]
