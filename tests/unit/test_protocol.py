"""The producer–worker contract: one "is this recording done?" rule, and the task's message."""

from __future__ import annotations

import json

import pytest

from echocam.bucket import protocol
from echocam.bucket.protocol import RESUME, Redo, skip_reason
from echocam.bucket.storage import ObjectInfo

ITEM = ObjectInfo("site a/x.wav", 1234, '"etag-1"')
FP = "fp-1"


def record(status="ok", code=None, *, run_id="old-run", fingerprint=FP, etag='"etag-1"'):
    return {
        "source_key": ITEM.key,
        "status": status,
        "error_code": code,
        "fingerprint": fingerprint,
        "source_etag": etag,
        "run_id": run_id,
    }


def reason(rec, redo=RESUME, run_id="new-run"):
    return skip_reason(rec, ITEM, fingerprint=FP, run_id=run_id, redo=redo)


RETRY = Redo(failed=True)


@pytest.mark.parametrize(
    ("rec", "redo", "expected"),
    [
        # resume: a current record (ok, or failed for a reason in the input) is done
        (None, RESUME, None),
        (record(), RESUME, protocol.DONE),
        (record("failed", "undecodable"), RESUME, protocol.DONE),
        (record("failed", "timeout"), RESUME, None),  # transient: tried again
        (record(fingerprint="other"), RESUME, None),
        (record(etag='"changed"'), RESUME, None),
        # --force: everything, but never what this run wrote (a redelivery)
        (record(), Redo(force=True), None),
        (record(run_id="new-run"), Redo(force=True), protocol.DONE_THIS_RUN),
        (record("failed", "download_failed", run_id="new-run"), Redo(force=True), None),
        # --retry-failed: failed records only, even current ones; nothing else
        (record("failed", "undecodable"), RETRY, None),
        (record("failed", "timeout"), RETRY, None),
        (record("failed", "empty", fingerprint="other"), RETRY, None),
        (record(), RETRY, protocol.NOT_FAILED),
        (None, RETRY, protocol.NO_RECORD),
        (record("failed", "undecodable", run_id="new-run"), RETRY, protocol.DONE_THIS_RUN),
        # --codes: only those codes
        (record("failed", "empty"), Redo(failed=True, codes=("empty",)), None),
        (
            record("failed", "undecodable"),
            Redo(failed=True, codes=("empty",)),
            protocol.other_code("undecodable"),
        ),
    ],
)
def test_one_rule(rec, redo, expected):
    assert reason(rec, redo) == expected
    assert protocol.is_done(rec, ITEM, fingerprint=FP, run_id="new-run", redo=redo) == (
        expected is not None
    )


def test_redo_flags_that_contradict_are_refused():
    with pytest.raises(ValueError):
        Redo(force=True, failed=True)
    with pytest.raises(ValueError):
        Redo(codes=("empty",))


def test_task_message_round_trips_through_json():
    run = {"run_id": "r", "fingerprint": FP, "params": {}, "input": "s3://a", "output": "s3://b"}
    redo = Redo(failed=True, codes=("empty", "timeout"))
    items, message = json.loads(
        json.dumps(protocol.task_args([ITEM], protocol.run_message(run, redo)))
    )
    assert protocol.decode_items(items) == [ITEM]
    assert protocol.decode_run(message) == (run, redo)
    # a message from before ``redo``: ``force`` alone
    assert protocol.decode_run({**run, "force": True}) == (run, Redo(force=True))


def test_task_messages_leave_the_runs_class_names_in_run_json():
    run = {"run_id": "r", "fingerprint": FP, "params": {}, "class_names": ["a"] * 1000}
    message = protocol.run_message(run, Redo())
    assert "class_names" not in message and message["run_id"] == "r"
