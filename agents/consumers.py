"""The notifications consumer, plus starting and cancelling runs over the socket."""

from collections.abc import Mapping
from typing import Any, ClassVar

from notifications.consumers import NotificationConsumer
from notifications.exceptions import ProtocolError
from notifications.protocol import Parser

from .exceptions import RunFinished, RunNotFound, RunRefused
from .protocol import RUN_PARSERS, RunCancel, RunStart
from .services import arun_cancel, arun_start
from .supervisor import SupervisorClosed


class AgentConsumer(NotificationConsumer):
    message_parsers: ClassVar[Mapping[str, Parser]] = RUN_PARSERS

    async def handle_message(self, message: Any) -> None:
        assert self.identity is not None
        match message:
            case RunStart(agent=agent, input=input, timeout=timeout):
                try:
                    run = await arun_start(user_id=self.identity.user_id, agent=agent, input=input, run_timeout=timeout)
                except RunRefused as exc:
                    raise ProtocolError(exc.code, exc.detail) from None
                except SupervisorClosed as exc:
                    raise ProtocolError("unavailable", str(exc)) from None
                await self._send({"type": "run.accepted", "run_id": str(run.id)})
            case RunCancel(run_id=run_id):
                try:
                    await arun_cancel(user_id=self.identity.user_id, run_id=run_id)
                except RunNotFound as exc:
                    raise ProtocolError("not_found", str(exc)) from None
                except RunFinished as exc:
                    raise ProtocolError("invalid_message", str(exc)) from None
            case _:
                await super().handle_message(message)
