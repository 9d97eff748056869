"""The wire format: round trips, and no input that makes the decoder raise anything but
the project's own `BadMessage`."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import BadMessage
from common.schemas import (
    MAX_BODY_BYTES,
    DeadLetter,
    TaskEnvelope,
    as_first_attempt,
    decode_result,
    decode_task,
    encode,
    utcnow,
)

pytestmark = pytest.mark.timeout(60)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
task_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=70) | st.integers(),
        "kind": st.text(max_size=70) | st.none(),
        "payload": json_values,
        "created_at": st.text(max_size=30) | st.integers(),
        "attempt": st.integers(-3, 5) | st.text(max_size=3),
        "max_attempts": st.integers(-1, 5) | st.none(),
        "producer_host": st.text(max_size=10),
        "producer_pid": st.integers() | st.text(max_size=3),
        "surprise": json_values,
    },
)


def test_a_task_survives_the_round_trip() -> None:
    task = TaskEnvelope(kind="echo", payload={"n": 1, "nested": {"ok": [1, 2.5, None]}})
    assert decode_task(encode(task)) == task


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_to_a_task_or_bad_message(body: bytes) -> None:
    try:
        decode_task(body)
    except BadMessage as exc:
        assert exc.reason in {"not-json", "schema", "too-large"}


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_any_json_decodes_to_a_task_or_bad_message(value: object) -> None:
    body = json.dumps(value).encode()
    for decode in (decode_task, decode_result):
        try:
            decode(body)
        except BadMessage as exc:
            assert exc.reason in {"not-json", "schema"}


@given(task_like)
@settings(max_examples=300, deadline=None)
def test_almost_tasks_decode_or_say_which_field_is_wrong(fields: dict[str, object]) -> None:
    try:
        decode_task(json.dumps(fields).encode())
    except BadMessage as exc:
        assert exc.reason == "schema"
        assert exc.detail.startswith("not a TaskEnvelope: ")


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [
        (b"Hello World!", "not-json", "body is not valid JSON"),
        (b"", "not-json", "body is not valid JSON"),
        (b"[1]", "schema", "body: Input should be an object"),
        (b'{"payload": {}}', "schema", "kind: Field required"),
        (b'{"kind": "echo", "x": 1}', "schema", "x: Extra inputs are not permitted"),
        (b'{"kind": "echo", "attempt": 0}', "schema", "attempt: Input should be greater"),
        (b" " * (MAX_BODY_BYTES + 1), "too-large", f"limit {MAX_BODY_BYTES}"),
    ],
)
def test_bad_bodies_say_what_is_wrong(body: bytes, reason: str, detail: str) -> None:
    with pytest.raises(BadMessage) as caught:
        decode_task(body)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


def test_dead_letters_carry_any_bytes() -> None:
    letter = DeadLetter(
        reason="not-json",
        error="e",
        queue="q",
        attempts=0,
        task_id=None,
        dead_lettered_at=utcnow(),
        body=b"\xff\x00\xfe",
    )
    assert DeadLetter.model_validate_json(encode(letter)) == letter


def test_replay_starts_a_task_again_and_leaves_garbage_as_it_was() -> None:
    task = TaskEnvelope(kind="fail", attempt=3)
    replayed = decode_task(as_first_attempt(encode(task)))
    assert (replayed.id, replayed.attempt) == (task.id, 1)
    assert as_first_attempt(b"\xffnot json") == b"\xffnot json"
