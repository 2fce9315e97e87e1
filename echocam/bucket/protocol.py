"""The producer–worker contract: the task's name, its message, and when a recording is done.

``echocam produce`` (no torch), the Celery task and local mode all import this module, so the
contract is written once:

- :data:`TASK_NAME`: the producer sends tasks by name and never imports the task itself (and
  :data:`COMPACTION_TASK`, which writes the manifest when the run ends);
- a task's arguments are ``[items, run]``: :func:`encode_items` / :func:`decode_items` for the
  ``[key, size, etag]`` triples, :func:`run_message` / :func:`decode_run` for the run
  (``run.json`` plus what the run redoes, a :class:`Redo`);
- :func:`skip_reason` is the one rule for "is this recording done?", used by the producer to
  choose what to enqueue, by the workers and local mode before they redo anything, and by
  ``--dry-run`` to say why a recording is skipped.

JSON only on the wire.  No torch and no Celery here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from echocam.bucket import progress
from echocam.bucket.storage import ObjectInfo
from echocam.errors import TRANSIENT_CODES

TASK_NAME = "echocam.process"
#: The run-end task that writes the manifest: arguments :func:`compaction_args`.
COMPACTION_TASK = "echocam.compact"
#: One part of a distributed "more like this" search: arguments ``echocam.search.part_args``.
SEARCH_TASK = "echocam.search"

# Why a recording is skipped (what --dry-run prints).
DONE = "done (current record)"
DONE_THIS_RUN = "done (this run)"
NO_RECORD = "no record (--retry-failed redoes failed ones only)"
NOT_FAILED = "ok (--retry-failed redoes failed ones only)"
EXTENSION = "extension"


def other_code(code: str | None) -> str:
    return f"failed with {code} (not in --codes)"


@dataclass(frozen=True)
class Redo:
    """What a run redoes although its record is current.

    ``force``: every recording.  ``failed``: only recordings whose record failed (with an
    error code in ``codes``, if any are given), whatever their fingerprint; recordings with no
    record, or an ok one, are left alone.  Records written by the run itself are never
    redone: a redelivered task skips what its first delivery finished.
    """

    force: bool = False
    failed: bool = False
    codes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.force and self.failed:
            raise ValueError("--force redoes everything; --retry-failed only failed recordings")
        if self.codes and not self.failed:
            raise ValueError("--codes selects failed recordings: use it with --retry-failed")

    def to_dict(self) -> dict[str, Any]:
        return {"force": self.force, "failed": self.failed, "codes": list(self.codes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Redo:
        return cls(bool(d.get("force")), bool(d.get("failed")), tuple(d.get("codes") or ()))

    @property
    def skipped(self) -> str:
        """What the recordings a run with these flags skips are, in a user's words."""
        if self.failed:
            codes = f" with {','.join(self.codes)}" if self.codes else ""
            return f"not selected (not failed{codes}, or no record yet)"
        if self.force:
            return "already written by this run"
        return "already done"


#: Redo nothing that is done (a plain run resumes).
RESUME = Redo()


def is_current(record: dict[str, Any] | None, *, etag: str | None, fingerprint: str) -> bool:
    """True when ``record`` already answers this source with this fingerprint (resume skips it).

    A record failed for a transient reason (timeout, crashed worker, download) is not current:
    the next run tries again.
    """
    if not record or record.get("fingerprint") != fingerprint:
        return False
    if etag is not None and record.get("source_etag") != etag:
        return False
    return record.get("status") == "ok" or record.get("error_code") not in TRANSIENT_CODES


def skip_reason(
    record: dict[str, Any] | None,
    item: ObjectInfo,
    *,
    fingerprint: str,
    run_id: str,
    redo: Redo = RESUME,
) -> str | None:
    """Why run ``run_id`` skips ``item`` whose record is ``record``; None when it needs work.

    The one "is this recording done?" rule of producer, workers and local mode.
    """
    current = is_current(record, etag=item.etag, fingerprint=fingerprint)
    if record is not None and record.get("run_id") == run_id:
        return DONE_THIS_RUN if current else None  # a redelivery, or a transient failure
    if redo.failed:
        if record is None:
            return NO_RECORD
        if record.get("status") != "failed":
            return NOT_FAILED
        if redo.codes and record.get("error_code") not in redo.codes:
            return other_code(record.get("error_code"))
        return None
    if redo.force:
        return None
    return DONE if current else None


def is_done(
    record: dict[str, Any] | None,
    item: ObjectInfo,
    *,
    fingerprint: str,
    run_id: str,
    redo: Redo = RESUME,
) -> bool:
    """Whether ``item`` needs no work in run ``run_id`` (see :func:`skip_reason`)."""
    return skip_reason(record, item, fingerprint=fingerprint, run_id=run_id, redo=redo) is not None


def needs_records(redo: Redo) -> bool:
    """Whether choosing what a new run enqueues depends on the records (not with ``--force``:
    no record can come from a run that has not started)."""
    return not redo.force


def encode_items(items: Iterable[ObjectInfo]) -> list[list[Any]]:
    return [[it.key, it.size, it.etag] for it in items]


def decode_items(raw: Iterable[list[Any]]) -> list[ObjectInfo]:
    return [ObjectInfo(key, size, etag) for key, size, etag in raw]


def run_message(run: dict[str, Any], redo: Redo) -> dict[str, Any]:
    """The run as a task carries it: ``run.json``'s fields (but the class names, which the
    workers' model has) plus ``redo``."""
    return {**{k: v for k, v in run.items() if k != "class_names"}, "redo": redo.to_dict()}


def decode_run(message: dict[str, Any]) -> tuple[dict[str, Any], Redo]:
    """(run, redo) from a task's run message (messages before ``redo`` carried ``force``)."""
    run = dict(message)
    raw = run.pop("redo", None)
    force = run.pop("force", False)
    return run, Redo.from_dict(raw) if raw is not None else Redo(force=bool(force))


def task_args(items: Iterable[ObjectInfo], message: dict[str, Any]) -> list[Any]:
    """The positional arguments of a :data:`TASK_NAME` task."""
    return [encode_items(items), message]


def send_compaction(app: Any, r: Any, run: dict[str, Any], *, wrote: bool, queue: str) -> None:
    """Enqueue the run's :data:`COMPACTION_TASK` on ``app`` (a Celery app: anything with
    ``send_task``) and note in its counters (Redis ``r``) that it went out.  Called by whichever
    of the producer and the run's last task ends the run (``progress`` decides, exactly once)."""
    app.send_task(COMPACTION_TASK, args=compaction_args(run, wrote=wrote), queue=queue)
    progress.compaction_sent(r, run["run_id"])


def compaction_args(run: dict[str, Any], *, wrote: bool) -> list[Any]:
    """The positional arguments of a :data:`COMPACTION_TASK` task: output URI, run id, and
    whether the run wrote anything (if not, the manifest may be current already)."""
    return [run["output"], run["run_id"], wrote]
