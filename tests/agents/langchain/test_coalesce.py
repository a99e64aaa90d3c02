"""Coalescing a token stream: by size, by age, by kind, and nothing lost or reordered."""

from hypothesis import given
from hypothesis import strategies as st

from agents.langchain.coalesce import Coalescer


def test_text_is_held_until_it_is_long_enough() -> None:
    coalescer = Coalescer(window_ms=1000, max_chars=10)
    assert coalescer.add("Hello", kind="text", now_ms=0) == []
    assert coalescer.add(" world", kind="text", now_ms=1) == ["Hello world"]
    assert not coalescer.pending


def test_text_goes_once_its_first_token_is_a_window_old() -> None:
    coalescer = Coalescer(window_ms=50, max_chars=1000)
    assert coalescer.add("a", kind="text", now_ms=0) == []
    assert coalescer.add("b", kind="text", now_ms=49) == []
    assert coalescer.due(now_ms=49.9) == []
    assert coalescer.add("c", kind="text", now_ms=50) == ["abc"]
    assert coalescer.add("d", kind="text", now_ms=60) == []
    assert coalescer.due(now_ms=110) == ["d"]


def test_reasoning_and_answer_text_are_never_one_chunk() -> None:
    coalescer = Coalescer(window_ms=1000, max_chars=1000)
    assert coalescer.add("think", kind="reasoning", now_ms=0) == []
    assert coalescer.add("say", kind="text", now_ms=1) == ["think"]
    assert coalescer.drain() == ["say"]
    assert coalescer.drain() == []


def test_empty_tokens_are_nothing() -> None:
    coalescer = Coalescer(window_ms=0, max_chars=1)
    assert coalescer.add("", kind="text", now_ms=0) == []
    assert not coalescer.pending


@given(
    st.lists(
        st.tuples(st.text(max_size=8), st.sampled_from(["text", "reasoning"]), st.integers(min_value=0, max_value=40))
    ),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=0, max_value=100),
)
def test_every_character_comes_out_once_in_order(
    tokens: list[tuple[str, str, int]], max_chars: int, window_ms: int
) -> None:
    coalescer = Coalescer(window_ms=window_ms, max_chars=max_chars)
    now, chunks = 0, []
    for text, kind, step in tokens:
        now += step
        chunks += coalescer.add(text, kind=kind, now_ms=now)
    chunks += coalescer.drain()
    assert "".join(chunks) == "".join(text for text, _, _ in tokens)
    assert all(chunks)
