"""How many agent_thinking events a model's token stream becomes, with the coalescing of LangChain agents.

    .venv/bin/python bench/coalescing.py                      # 1,000 tokens at 100, 1,000 and 10,000 tokens/s
    .venv/bin/python bench/coalescing.py --tokens 5000 --rates 50,500 --window-ms 50 --max-chars 400

A standalone count, no database and no server: the real ``RunCallbackHandler``
is fed tokens through ``on_llm_new_token`` on a real clock, paced at each
rate, with a context that counts the thoughts it is told (each one an
``agent_thinking`` row on a real run). Tokens are words of about five
characters with their space, as a chat model streams them. Without
coalescing, every token would be an event: 1,000 per 1,000 tokens.
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from agents.context import RunContext  # noqa: E402
from agents.langchain.handler import RunCallbackHandler  # noqa: E402

WORDS = "agents think call tools and finish or fail while every step is written to the log".split()


class Counter:
    """The one part of ``RunContext`` a token stream reaches: ``think``."""

    def __init__(self) -> None:
        self.thoughts: list[str] = []

    async def think(self, thought: str) -> None:
        self.thoughts.append(thought)


async def stream(*, tokens: int, rate: float, window_ms: float, max_chars: int) -> dict[str, Any]:
    counter = Counter()
    ctx: RunContext = counter  # type: ignore[assignment]  # Duck-typed: only think() is called.
    handler = RunCallbackHandler(ctx, window_ms=window_ms, max_chars=max_chars)
    run_id = uuid.uuid4()
    started = time.monotonic()
    for index in range(tokens):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await handler.on_llm_new_token(WORDS[index % len(WORDS)] + " ", run_id=run_id)
    await handler.on_llm_end(None, run_id=run_id)
    await handler.aclose()
    seconds = time.monotonic() - started
    text = "".join(counter.thoughts)
    assert text == "".join(WORDS[i % len(WORDS)] + " " for i in range(tokens)), "text lost or reordered"
    return {
        "rate_tokens_per_s": rate,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "events": len(counter.thoughts),
        "events_per_1000_tokens": round(len(counter.thoughts) * 1000 / tokens, 1),
        "mean_chars_per_event": round(len(text) / max(len(counter.thoughts), 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--rates", default="100,1000,10000", help="tokens per second, comma-separated")
    parser.add_argument("--window-ms", type=float, default=50.0, help="AGENT_THINKING_COALESCE_MS")
    parser.add_argument("--max-chars", type=int, default=400, help="AGENT_THINKING_COALESCE_CHARS")
    args = parser.parse_args()
    print(f"window {args.window_ms:g} ms, at most {args.max_chars} characters; uncoalesced: 1000 per 1000 tokens")
    print(f"{'tokens/s':>10} {'tokens':>7} {'seconds':>8} {'events':>7} {'per 1000 tokens':>16} {'chars/event':>12}")
    for rate in (float(value) for value in args.rates.split(",")):
        row = asyncio.run(stream(tokens=args.tokens, rate=rate, window_ms=args.window_ms, max_chars=args.max_chars))
        print(
            f"{row['rate_tokens_per_s']:>10g} {row['tokens']:>7} {row['seconds']:>8} {row['events']:>7}"
            f" {row['events_per_1000_tokens']:>16} {row['mean_chars_per_event']:>12}"
        )


if __name__ == "__main__":
    main()
