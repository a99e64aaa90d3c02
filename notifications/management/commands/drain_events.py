"""Publish events whose publish failed, until stopped (or once with --once)."""

import asyncio
import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils.module_loading import import_string

from config.signals import stop_signals_handled
from notifications import metrics
from notifications.drain import BatchResult, adrain_batch, pending_counts
from notifications.metrics_http import Exporter
from notifications.services import aconnections_close

PROGRESS_SECONDS = 2.0
CLOSE_TIMEOUT_SECONDS = 2.0
EXIT_FORCED = 130  # A second signal, or a shutdown over its time bound.


@dataclass(slots=True)
class _Progress:
    next_at: float
    reported: str = ""


@dataclass(slots=True)
class Totals:
    published: int = 0
    failed_attempts: int = 0

    def line(self) -> str:
        return f"published {self.published}, failed attempts {self.failed_attempts}"


class Command(BaseCommand):
    help = (
        "Publish pending events (those whose publish failed) through the channel layer, oldest first. "
        "Runs until SIGINT/SIGTERM, or makes one pass with --once. Needs REDIS_URL."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="Try every pending event once (ignoring retry backoff), then exit: 0 if all went, 1 if not.",
        )
        parser.add_argument("--batch-size", type=int, default=settings.DRAIN_BATCH_SIZE)
        parser.add_argument(
            "--concurrency",
            type=int,
            default=settings.DRAIN_CONCURRENCY,
            help="Batches in progress at once (each claims different users).",
        )
        parser.add_argument(
            "--poll-interval", type=float, default=settings.DRAIN_POLL_SECONDS, help="Seconds between polls when idle."
        )
        parser.add_argument(
            "--min-age",
            type=float,
            default=settings.DRAIN_MIN_AGE_SECONDS,
            help="Leave events younger than this many seconds to the on-commit publisher (0 allowed).",
        )
        parser.add_argument(
            "--max-attempts",
            type=int,
            default=settings.DRAIN_MAX_ATTEMPTS,
            help="Report an event as stuck after this many failed publishes (it is kept, and still retried).",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            default=settings.DRAIN_SHUTDOWN_SECONDS,
            help="On a signal, how long finishing the batch in hand may take before the command exits anyway.",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=settings.DRAIN_METRICS_PORT,
            help="Serve this process's metrics at http://ADDRESS:PORT/metrics (0: not served).",
        )
        parser.add_argument(
            "--metrics-address",
            default=settings.DRAIN_METRICS_ADDRESS,
            help="The address the metrics are served on (0.0.0.0 for a scraper on another host).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if min(options["batch_size"], options["max_attempts"], options["concurrency"]) < 1:
            raise CommandError("--batch-size, --concurrency and --max-attempts must be at least 1.")
        if min(options["poll_interval"], options["shutdown_timeout"]) <= 0 or options["min_age"] < 0:
            raise CommandError("--poll-interval and --shutdown-timeout must be above 0, --min-age not negative.")
        if isinstance(get_channel_layer(), InMemoryChannelLayer):
            raise CommandError(
                "REDIS_URL is not set, so the channel layer is in-memory: it reaches only this process, "
                "and drain_events could not deliver to any server. Set REDIS_URL to the servers' Redis."
            )
        hooks = [(path, import_string(path)) for path in settings.DRAIN_HOOKS]  # A bad path fails now.
        self.verbosity: int = options["verbosity"]
        exporter = self._exporter(options)
        try:
            incomplete = asyncio.run(self._main(options, hooks))
        finally:
            if exporter is not None:
                exporter.stop()
        if incomplete:
            raise CommandError("Some events could not be published; they stay pending.", returncode=1)

    def _exporter(self, options: dict[str, Any]) -> Exporter | None:
        if not options["metrics_port"] or not metrics.enabled():
            return None
        try:
            exporter = Exporter(address=options["metrics_address"], port=options["metrics_port"])
        except OSError as exc:
            raise CommandError(
                f"Cannot serve metrics on {options['metrics_address']}:{options['metrics_port']}: {exc}"
            ) from None
        exporter.start()
        self.stdout.write(f"Metrics at http://{options['metrics_address']}:{exporter.port}/metrics.")
        return exporter

    async def _main(self, options: dict[str, Any], hooks: list[tuple[str, Any]]) -> bool:
        """Drain until done or stopped; print the summary; return whether --once left failures."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        totals = Totals()

        def on_signal(signum: signal.Signals, count: int) -> None:
            if count > 1:
                self._exit_now(totals, f"Second {signum.name}: exiting now; unpublished events stay pending.")
            stop.set()
            self.stderr.write(f"{signum.name}: finishing the batch in hand, then stopping.")
            loop.call_later(options["shutdown_timeout"], self._exit_now, totals, "Shutdown took too long: exiting now.")

        with stop_signals_handled(on_signal):
            if self.verbosity >= 1:
                mode = "one pass" if options["once"] else "SIGINT or SIGTERM stops"
                self.stdout.write(
                    f"Draining pending events (batch {options['batch_size']}, min age {options['min_age']:g}s, "
                    f"stuck after {options['max_attempts']} attempts; {mode})."
                )
            await self._drain(options, hooks, stop, totals)
            limit = options["max_attempts"]
            try:
                pending, stuck = await database_sync_to_async(pending_counts)(max_attempts=limit)
            except DatabaseError as exc:
                self.stdout.write(f"Done: {totals.line()}; pending unknown (database unavailable: {exc}).")
            else:
                still = f"still pending {pending} ({stuck} stuck at {limit}+ attempts)"
                self.stdout.write(f"Done: {totals.line()}; {still}.")
            try:
                await asyncio.wait_for(aconnections_close(), timeout=CLOSE_TIMEOUT_SECONDS)
            except Exception as exc:  # The process is ending; its sockets close with it.
                self.stderr.write(f"Could not close the channel layer cleanly: {exc!r}")
        return bool(options["once"] and not stop.is_set() and totals.failed_attempts)

    async def _drain(
        self, options: dict[str, Any], hooks: list[tuple[str, Any]], stop: asyncio.Event, totals: Totals
    ) -> None:
        """``--concurrency`` batches at once: one claims while another sends and a third records.

        They never share a user (a claim skips users another holds), so each
        user's events still go out in seq order, from one of them at a time.
        """
        # --once tries every pending event once, backoff or not; follow mode respects backoff.
        progress = _Progress(next_at=time.monotonic() + PROGRESS_SECONDS)
        tried_and_failed: set[uuid.UUID] = set()
        claiming = asyncio.Lock()
        await asyncio.gather(
            *(
                self._drain_worker(
                    options, hooks if index == 0 else [], stop, totals, tried_and_failed, progress, claiming
                )
                for index in range(options["concurrency"])
            )
        )

    async def _drain_worker(
        self,
        options: dict[str, Any],
        hooks: list[tuple[str, Any]],
        stop: asyncio.Event,
        totals: Totals,
        tried_and_failed: set[uuid.UUID],
        progress: "_Progress",
        claiming: asyncio.Lock,
    ) -> None:
        next_hooks = 0.0
        while not stop.is_set():
            if hooks and time.monotonic() >= next_hooks:
                await self._run_hooks(hooks)
                next_hooks = time.monotonic() + settings.DRAIN_HOOK_SECONDS
            try:
                result: BatchResult = await adrain_batch(
                    batch_size=options["batch_size"],
                    min_age_seconds=options["min_age"],
                    backoff=not options["once"],
                    exclude=frozenset(tried_and_failed),
                    stop=stop,
                    on_claimed=self._claimed if self.verbosity >= 3 else None,
                    claiming=claiming,
                )
            except DatabaseError as exc:
                # Claims and records are each one short transaction: a failed one
                # changed nothing, and users it had leased return when the lease ends.
                metrics.database_error(operation="drain")
                if options["once"]:
                    raise CommandError(f"The database is unavailable: {exc}", returncode=1) from None
                self.stderr.write(f"Database unavailable, retrying in {options['poll_interval']:g}s: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=options["poll_interval"])
                continue
            totals.published += result.published
            totals.failed_attempts += result.failed
            if options["once"]:
                tried_and_failed.update(result.failed_ids)
            if self.verbosity >= 2 and result.claimed:
                self.stdout.write(
                    f"Batch: published {result.published}, failed {result.failed}, released {result.released}."
                )
            now = time.monotonic()
            if self.verbosity >= 1 and now >= progress.next_at and progress.reported != totals.line():
                self.stdout.write(f"Progress: {totals.line()}.")
                progress.reported = totals.line()
                progress.next_at = now + PROGRESS_SECONDS
            if result.claimed < options["batch_size"]:
                if options["once"]:
                    return
                # Idle, or only backing-off events left: one indexed query per interval.
                try:
                    await asyncio.wait_for(stop.wait(), timeout=options["poll_interval"])
                except TimeoutError:
                    pass

    def _claimed(self, count: int) -> None:
        self.stdout.write(f"Claimed {count} events.")
        self.stdout.flush()

    async def _run_hooks(self, hooks: list[tuple[str, Any]]) -> None:
        for path, hook in hooks:
            try:
                done = await database_sync_to_async(hook)()
            except Exception as exc:  # A failing hook must not stop the draining; it is reported.
                self.stderr.write(f"Hook {path} failed: {type(exc).__name__}: {exc}")
                continue
            if done and self.verbosity >= 1:
                self.stdout.write(f"Hook {path}: {done}.")

    def _exit_now(self, totals: Totals, reason: str) -> None:
        """Leave at once. Leased events return to others when their lease ends; nothing is lost."""
        self.stderr.write(reason)
        self.stdout.write(f"Exiting early: {totals.line()}.")
        self.stdout.flush()
        self.stderr.flush()
        os._exit(EXIT_FORCED)
