"""Coalesce a stream of model tokens into thought-sized chunks.

A model streams a token every few milliseconds; one ``agent_thinking`` row
per token would make the log's writes follow the model's token rate. Text is
held until it is ``max_chars`` long or its first token is ``window_ms`` old,
whichever comes first, and whatever is held goes out when the stream of that
kind stops (the model call ends, a tool starts, the run ends). Reasoning and
answer text are held apart, so a chunk is never half of each.
"""

from dataclasses import dataclass, field


@dataclass(slots=True)
class Coalescer:
    """Text waiting to be sent as one thought, and the rule for when it goes."""

    window_ms: float
    max_chars: int
    kind: str = ""
    _parts: list[str] = field(default_factory=list)
    _size: int = 0
    _since_ms: float = 0.0

    def add(self, text: str, *, kind: str, now_ms: float) -> list[str]:
        """Take a token at ``now_ms``; return the chunks that are due (none, usually), in order."""
        due: list[str] = []
        if self._parts and kind != self.kind:
            due += self.drain()
        if not text:
            return due
        if not self._parts:
            self.kind, self._since_ms = kind, now_ms
        self._parts.append(text)
        self._size += len(text)
        if self._size >= self.max_chars or now_ms - self._since_ms >= self.window_ms:
            due += self.drain()
        return due

    def due(self, *, now_ms: float) -> list[str]:
        """What is due by age alone at ``now_ms`` (for a timer: a stream that paused)."""
        if self._parts and now_ms - self._since_ms >= self.window_ms:
            return self.drain()
        return []

    def drain(self) -> list[str]:
        """Whatever is held, as one chunk (none if nothing is)."""
        if not self._parts:
            return []
        text = "".join(self._parts)
        self._parts, self._size = [], 0
        return [text]

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    @property
    def oldest_ms(self) -> float:
        """When the held text's first token came (meaningful while ``pending``)."""
        return self._since_ms
