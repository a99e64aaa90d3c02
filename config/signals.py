"""SIGINT and SIGTERM for long-running commands: the operating system's signals, not Django's.

Usage, the convention every command here follows::

    def on_signal(signum: signal.Signals, count: int) -> None:
        if count == 1:
            stop.set()  # The first: stop gracefully.
        else:
            ...  # The second: stop now.

    with stop_signals_handled(on_signal):
        ...
"""

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
OnSignal = Callable[[signal.Signals, int], None]


@contextlib.contextmanager
def stop_signals_handled(on_signal: OnSignal) -> Iterator[None]:
    """Call ``on_signal(signum, count)`` on each SIGINT or SIGTERM inside the block; restore the handlers after.

    ``count`` counts both signals together, from 1. Inside a running asyncio
    loop the handlers are the loop's (``add_signal_handler``), so the
    callback runs on the loop, between its callbacks, and may set an
    ``asyncio.Event`` or schedule work; otherwise they are Python's
    (``signal.signal``), so the callback interrupts the main thread
    wherever it is and should only set a flag (a ``threading.Event``).

    On exit the previous Python-level handler of each signal is put back
    as it was: the loop's removal alone would leave Python's defaults.
    Blocks do not nest on one loop (the loop keeps one handler per signal).
    Signals can only be handled from the main thread.
    """
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    count = 0

    def received(signum: int) -> None:
        nonlocal count
        count += 1
        on_signal(signal.Signals(signum), count)

    def python_handler(signum: int, frame: FrameType | None) -> None:
        received(signum)

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    installed: list[signal.Signals] = []
    try:
        for signum in STOP_SIGNALS:
            if loop is not None:
                loop.add_signal_handler(signum, received, signum)
            else:
                signal.signal(signum, python_handler)
            installed.append(signum)
        yield
    finally:
        for signum in reversed(installed):
            if loop is not None:
                loop.remove_signal_handler(signum)
            handler = previous[signum]
            # None: the handler was not installed from Python, so it cannot be put back; the default is the nearest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
