"""Publish events whose publish failed, until stopped (or once with --once)."""

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from notifications.drain import BatchResult, drain_batch, pending_counts
from notifications.services import alayer_close

PROGRESS_SECONDS = 2.0
EXIT_INCOMPLETE = 1  # --once: some events could not be published.
EXIT_FORCED = 130  # A second signal, or shutdown over its time bound.


@dataclass(slots=True)
class Totals:
    published: int = 0
    failed: int = 0


class Command(BaseCommand):
    help = (
        "Publish pending events (those whose publish failed) through the channel layer, oldest first. "
        "Runs until SIGINT/SIGTERM, or drains once with --once. Needs REDIS_URL."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="Try every pending event once (ignoring retry backoff), then exit: 0 if all went, 1 if some failed.",
        )
        parser.add_argument("--batch-size", type=int, default=settings.DRAIN_BATCH_SIZE)
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
            help="After this many failed publishes an event is reported as stuck (and kept).",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            default=settings.DRAIN_SHUTDOWN_SECONDS,
            help="On a signal, how long the batch in hand may take before the command gives up.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if (
            options["batch_size"] < 1
            or options["poll_interval"] <= 0
            or options["min_age"] < 0
            or options["max_attempts"] < 1
        ):
            raise CommandError(
                "--batch-size and --max-attempts must be at least 1, --poll-interval above 0, --min-age not negative."
            )
        if isinstance(get_channel_layer(), InMemoryChannelLayer):
            raise CommandError(
                "REDIS_URL is not set, so the channel layer is in-memory: it reaches only this process, "
                "and drain_events could not deliver to any server. Set REDIS_URL to the servers' Redis."
            )
        self.verbosity: int = options["verbosity"]
        totals, stopped_early = asyncio.run(self._main(options))
        pending, stuck = pending_counts(max_attempts=options["max_attempts"])
        self.stdout.write(
            f"Published {totals.published}, failed {totals.failed}, still pending {pending} "
            f"({stuck} stuck at {options['max_attempts']} attempts)."
        )
        if options["once"] and not stopped_early and totals.failed:
            raise SystemExit(EXIT_INCOMPLETE)

    async def _main(self, options: dict[str, Any]) -> tuple[Totals, bool]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        totals = Totals()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                self._exit_now(
                    totals, f"Second {signal.Signals(signum).name}: exiting now; unpublished events stay pending."
                )
            stop.set()
            self.stderr.write(f"{signal.Signals(signum).name}: finishing the batch in hand, then stopping.")
            loop.call_later(options["shutdown_timeout"], self._exit_now, totals, "Shutdown took too long: exiting now.")

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        if self.verbosity >= 1:
            self.stdout.write(
                f"Draining pending events (batch {options['batch_size']}, min age {options['min_age']:g}s, "
                f"max attempts {options['max_attempts']}){'' if options['once'] else '; SIGINT or SIGTERM stops'}."
            )
        try:
            await self._drain(options, stop, totals)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await alayer_close()
        return totals, stop.is_set()

    async def _drain(self, options: dict[str, Any], stop: asyncio.Event, totals: Totals) -> None:
        batch = database_sync_to_async(drain_batch)
        # --once tries every pending event once, backoff or not; follow mode respects backoff.
        tried_and_failed: set[Any] = set()
        next_hooks = 0.0
        next_progress = time.monotonic() + PROGRESS_SECONDS
        while not stop.is_set():
            if time.monotonic() >= next_hooks:
                await self._run_hooks()
                next_hooks = time.monotonic() + settings.DRAIN_HOOK_SECONDS
            result: BatchResult = await batch(
                batch_size=options["batch_size"],
                min_age_seconds=options["min_age"],
                max_attempts=options["max_attempts"],
                backoff=not options["once"],
                exclude=tried_and_failed,
                on_claimed=self._claimed if self.verbosity >= 3 else None,
            )
            if options["once"]:
                tried_and_failed.update(result.failed_ids)
            totals.published += result.published
            totals.failed += result.failed
            if self.verbosity >= 2 and result.claimed:
                self.stdout.write(f"Batch: published {result.published}, failed {result.failed}.")
            if time.monotonic() >= next_progress and self.verbosity >= 1:
                self.stdout.write(f"Progress: published {totals.published}, failed {totals.failed}.")
                next_progress = time.monotonic() + PROGRESS_SECONDS
            if result.claimed < options["batch_size"]:
                if options["once"]:
                    return
                # Idle (or only backing-off events left): one indexed query per interval.
                try:
                    await asyncio.wait_for(stop.wait(), timeout=options["poll_interval"])
                except TimeoutError:
                    pass

    def _claimed(self, count: int) -> None:
        self.stdout.write(f"Claimed {count} events.")
        self.stdout.flush()

    async def _run_hooks(self) -> None:
        for path in settings.DRAIN_HOOKS:
            try:
                done = await database_sync_to_async(import_string(path))()
            except Exception as exc:  # A failing hook must not stop the draining.
                self.stderr.write(f"Hook {path} failed: {type(exc).__name__}: {exc}")
                continue
            if done and self.verbosity >= 1:
                self.stdout.write(f"Hook {path}: {done}.")

    def _exit_now(self, totals: Totals, reason: str) -> None:
        """Leave at once: an open transaction rolls back, so its events stay pending."""
        self.stderr.write(reason)
        self.stdout.write(f"Published {totals.published}, failed {totals.failed} before exiting early.")
        self.stdout.flush()
        self.stderr.flush()
        os._exit(EXIT_FORCED)
