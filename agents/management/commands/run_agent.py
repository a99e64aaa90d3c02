"""Run an agent from the command line, print its events live, exit with its outcome."""

import asyncio
import contextlib
import json
import signal
import uuid
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from agents.exceptions import RunFinished, RunNotFound, RunRefused
from agents.lifecycle import TERMINAL
from agents.models import ACTIVE_STATUSES, AgentRun, RunStatus
from agents.services import arun_cancel, arun_start
from agents.supervisor import supervisor
from config.signals import stop_signals_handled
from notifications.exceptions import InvalidJson
from notifications.frames import event_frame
from notifications.jsonlimits import json_parse
from notifications.models import Event
from notifications.services import aconnections_close

INTERRUPT_REASON = "The run was cancelled from the command line."

# The command's exit status for each way a run can end.
EXIT_CODES = {
    RunStatus.COMPLETED: 0,
    RunStatus.FAILED: 1,
    RunStatus.TIMED_OUT: 124,
    RunStatus.CANCELLED: 130,
}
EXIT_USAGE = 2
EXIT_FAILED = EXIT_CODES[RunStatus.FAILED]


class Command(BaseCommand):
    help = (
        "Run an agent as a user, printing each lifecycle event as it happens. "
        "Exit status: 0 completed, 1 failed, 124 timed out, 130 cancelled (Ctrl-C), 2 bad usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's name (GET /api/agents/ lists them).")
        parser.add_argument("--user", required=True, help="Username whose run it is (and who sees the events).")
        parser.add_argument("--input", default="{}", help="The input, a JSON object.")
        parser.add_argument("--timeout", type=float, default=None, help="Seconds before the run times out.")

    def handle(self, *args: Any, agent: str, user: str, input: str, timeout: float | None, **options: Any) -> None:
        try:
            run_input = json_parse(input)
        except InvalidJson as exc:
            raise CommandError(f"--input: {exc}", returncode=EXIT_USAGE) from None
        try:
            user_id = get_user_model()._default_manager.filter(username=user).values_list("pk", flat=True).first()
        except DatabaseError as exc:
            raise CommandError(f"The database is unavailable: {exc}", returncode=EXIT_FAILED) from None
        if user_id is None:
            raise CommandError(f"No user named {user!r}.", returncode=EXIT_USAGE)
        run = self._follow if settings.AGENT_EXECUTION == "worker" else self._run
        status = asyncio.run(run(user_id=user_id, agent=agent, run_input=run_input, run_timeout=timeout))
        if status != RunStatus.COMPLETED:
            raise SystemExit(EXIT_CODES.get(status, 1))

    async def _run(self, *, user_id: int, agent: str, run_input: object, run_timeout: float | None) -> RunStatus:
        started: list[AgentRun] = []
        interrupts = 0

        def interrupt(signum: signal.Signals, count: int) -> None:
            # Ctrl-C (or SIGTERM) cancels the run; it then records its end and we exit.
            # A second one stops waiting for that end (the database is down): the
            # reaper of drain_events ends the run instead.
            nonlocal interrupts
            interrupts = count
            if count > 1:
                self.stderr.write("Interrupted again: not waiting for the run's end to be recorded.")
            else:
                self.stderr.write("Interrupted: cancelling the run (interrupt again to stop waiting for its end).")
            for run in started:
                _run_stop(run, abandon_end=count > 1)

        async with contextlib.AsyncExitStack() as stack:
            # Undone in reverse: the runs are ended and the connections closed while signals are still handled.
            stack.enter_context(stop_signals_handled(interrupt))
            stack.push_async_callback(aconnections_close)
            stack.push_async_callback(supervisor.shutdown, timeout_seconds=5)
            try:
                run = await arun_start(
                    user_id=user_id, agent=agent, input=run_input, run_timeout=run_timeout, observer=self._print
                )
            except RunRefused as exc:
                raise CommandError(exc.detail, returncode=EXIT_USAGE) from None
            except DatabaseError as exc:
                raise CommandError(f"The database is unavailable: {exc}", returncode=EXIT_FAILED) from None
            started.append(run)
            if interrupts:  # While the run was being created.
                _run_stop(run, abandon_end=interrupts > 1)
            await supervisor.join(run.id)
            try:
                ended: AgentRun = await database_sync_to_async(AgentRun.objects.get)(pk=run.id)
            except DatabaseError as exc:
                raise CommandError(
                    f"The run's outcome could not be read, the database is unavailable: {exc}", returncode=EXIT_FAILED
                ) from None
            return RunStatus(ended.status)

    async def _follow(self, *, user_id: int, agent: str, run_input: object, run_timeout: float | None) -> RunStatus:
        """On workers: enqueue the run, then print its events from the log until its end."""
        loop = asyncio.get_running_loop()
        stop_following = asyncio.Event()
        interrupts = 0
        run_id: uuid.UUID | None = None
        cancelling: list[asyncio.Task[None]] = []

        def interrupt(signum: signal.Signals, count: int) -> None:
            # Ctrl-C (or SIGTERM) asks the worker to cancel the run, and we follow it to its end;
            # a second one stops following (the worker still ends the run).
            nonlocal interrupts
            interrupts = count
            if interrupts > 1:
                self.stderr.write("Interrupted again: not following the run any longer.")
                stop_following.set()
                return
            self.stderr.write("Interrupted: cancelling the run (interrupt again to stop following it).")
            if run_id is not None:
                cancelling.append(loop.create_task(self._cancel(user_id, run_id)))

        async with contextlib.AsyncExitStack() as stack:
            # Undone in reverse: the cancel requests are awaited and the connections closed while signals are handled.
            stack.enter_context(stop_signals_handled(interrupt))
            stack.push_async_callback(aconnections_close)
            stack.push_async_callback(_all_awaited, cancelling)
            try:
                run = await arun_start(user_id=user_id, agent=agent, input=run_input, run_timeout=run_timeout)
            except RunRefused as exc:
                raise CommandError(exc.detail, returncode=EXIT_USAGE) from None
            except DatabaseError as exc:
                raise CommandError(f"The database is unavailable: {exc}", returncode=EXIT_FAILED) from None
            run_id = run.id
            if interrupts:
                await self._cancel(user_id, run_id)
            try:
                ended = await self._print_until_end(run, stop_following)
            except DatabaseError as exc:
                raise CommandError(
                    f"The run's events could not be read, the database is unavailable: {exc}", returncode=EXIT_FAILED
                ) from None
            return ended

    async def _print_until_end(self, run: AgentRun, stop_following: asyncio.Event) -> RunStatus:
        """Print the run's events as they are logged; return its status once it has ended."""
        interval: float = settings.RUN_AGENT_FOLLOW_POLL_SECONDS
        after, waited, hinted = 0, 0.0, False
        while not stop_following.is_set():
            events = [event async for event in Event.objects.filter(run_id=run.id, seq__gt=after).order_by("seq")]
            for event in events:
                self._print(event)
                after = event.seq
            if events and events[-1].event in TERMINAL:
                break
            if not events and after == 0:
                waited += interval
                if waited >= settings.RUN_AGENT_WORKER_HINT_SECONDS and not hinted:
                    hinted = True
                    self.stderr.write(
                        "The run is queued and no worker has taken it yet: is `manage.py run_worker` running?"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_following.wait(), timeout=interval)
        ended: AgentRun = await AgentRun.objects.aget(pk=run.id)
        if ended.status in ACTIVE_STATUSES:  # Stopped following: it is being cancelled.
            return RunStatus.CANCELLED
        return RunStatus(ended.status)

    async def _cancel(self, user_id: int, run_id: uuid.UUID) -> None:
        try:
            await arun_cancel(user_id=user_id, run_id=run_id)
        except (RunFinished, RunNotFound):  # It has just ended.
            pass
        except DatabaseError as exc:
            self.stderr.write(f"Could not ask for the run's cancellation, the database is unavailable: {exc}")

    def _print(self, event: Event) -> None:
        frame = event_frame(event)
        self.stdout.write(f"{frame['seq']:>6} {frame['event']:<16} {json.dumps(frame['data'], ensure_ascii=False)}")
        self.stdout.flush()


def _run_stop(run: AgentRun, *, abandon_end: bool) -> None:
    supervisor.cancel(run.id, reason=INTERRUPT_REASON)
    if abandon_end:
        supervisor.abandon_end(run.id)


async def _all_awaited(tasks: list[asyncio.Task[None]]) -> None:
    if tasks:
        await asyncio.wait(tasks)  # Each is one bounded query.
