"""SSE ids and the resume positions they name."""

import pytest

from agents.agui.sse import InvalidLastEventId, ResumePoint, resume_point, sse_frame, sse_ids


@pytest.mark.parametrize(
    ("header", "point"),
    [
        (None, ResumePoint(after_seq=0)),
        ("", ResumePoint(after_seq=0)),
        ("0", ResumePoint(after_seq=0)),
        ("12", ResumePoint(after_seq=12)),
        ("12.0", ResumePoint(after_seq=11, partial_seq=12, skip=1)),
        ("12.3", ResumePoint(after_seq=11, partial_seq=12, skip=4)),
        ("1.0", ResumePoint(after_seq=0, partial_seq=1, skip=1)),
    ],
)
def test_a_last_event_id_names_where_the_stream_resumes(header: str | None, point: ResumePoint) -> None:
    assert resume_point(header) == point


@pytest.mark.parametrize("header", ["x", "-1", "1.", ".1", "1.2.3", "01", "1.01", "1" * 20, "1 2"])
def test_an_id_this_stream_never_sent_is_refused(header: str) -> None:
    with pytest.raises(InvalidLastEventId):
        resume_point(header)


def test_a_groups_ids_end_with_the_plain_seq() -> None:
    assert sse_ids(7, 1) == ["7"]
    assert sse_ids(7, 3) == ["7.0", "7.1", "7"]
    for count in (1, 3, 5):
        ids = sse_ids(9, count)
        # Resuming from any id of the group skips exactly the events up to it.
        for index, sse_id in enumerate(ids[:-1]):
            assert resume_point(sse_id).skip == index + 1
        assert resume_point(ids[-1]) == ResumePoint(after_seq=9)


def test_a_frame_is_one_data_line_even_when_the_text_has_newlines() -> None:
    frame = sse_frame("3.1", {"type": "X", "delta": "a\nb\r\nc\u2028"})
    assert frame == b'id: 3.1\ndata: {"type":"X","delta":"a\\nb\\r\\nc\xe2\x80\xa8"}\n\n'
