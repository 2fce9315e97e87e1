"""How a run writes a recording's files: every output is put before the record, which is created
only if absent (a second create is refused, racing creates leave one winner), and a redelivered
task rewrites byte-identical outputs.

Real stores (a directory, and SeaweedFS for S3), real recordings from ``samples/``, wrapped in a
store that delegates to them and notes each put as it starts and ends.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from echocam.bucket.keys import output_dir
from echocam.bucket.storage import LocalStore, S3Store, read_json
from tests.helpers import SAMPLES, explain_store

CLIPS = ["S4A03895_20190522_053000.wav", "S4A03895_20190522_060000.wav"]  # 10 s each, 22 kHz
BUCKET = "store-writes"
KINDS = ["local", pytest.param("s3", marks=pytest.mark.s3)]  # a directory, SeaweedFS


@pytest.fixture(scope="module")
def s3(seaweed):
    """SeaweedFS with the module's bucket."""
    seaweed.create_bucket(BUCKET)
    return seaweed


def make_store(kind: str, request, tmp_path: Path):
    """A fresh, empty store of ``kind``: a directory, or a prefix of a SeaweedFS bucket, both
    named from the test."""
    if kind == "local":
        return LocalStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3")
    return S3Store(f"s3://{BUCKET}/{request.node.name}", s3.client())


@pytest.fixture()
def sources(tmp_path) -> LocalStore:
    """Two real recordings and two bad inputs (a failed record has no outputs)."""
    src = tmp_path / "in"
    (src / "site").mkdir(parents=True)
    for name in CLIPS:
        shutil.copy(SAMPLES / name, src / "site" / name)
    (src / "bad").mkdir()
    (src / "bad" / "empty.wav").write_bytes(b"")
    (src / "bad" / "text.wav").write_bytes(b"not audio at all\n" * 20)
    return LocalStore(src)


class RecordingStore:
    """A real store that notes each put as it starts and as it ends; everything else passes."""

    def __init__(self, inner):
        self.inner, self.uri = inner, inner.uri
        self.events: list[tuple] = []
        self._lock = threading.Lock()

    def _note(self, *event) -> None:
        with self._lock:
            self.events.append(event)

    def list(self, **kw):
        return self.inner.list(**kw)

    def keys(self, **kw):
        return self.inner.keys(**kw)

    def get(self, key, **kw):
        return self.inner.get(key, **kw)

    def put(self, key, data, *, if_absent=False):
        self._note("start", key, if_absent)
        ok = self.inner.put(key, data, if_absent=if_absent)
        self._note("end", key, if_absent, ok)
        return ok

    def put_file(self, key, path):
        self._note("start", key, False)
        self.inner.put_file(key, path)
        self._note("end", key, False, True)

    def delete(self, keys):
        self.inner.delete(keys)


def assert_outputs_then_record(store: RecordingStore, keys: list[str], *, if_absent: bool):
    """For each source: every output put ends before its record's put starts; one record put,
    conditional (``if_absent``) exactly when asked; the outputs put are those the record lists."""
    events = list(enumerate(store.events))
    for key in keys:
        d = output_dir(key) + "/"
        rec_key = d + "record.json"
        record = read_json(store.inner, rec_key)
        listed = {
            k for v in record["outputs"].values() for k in (v if isinstance(v, list) else [v])
        }
        mine = [(i, e) for i, e in events if e[1].startswith(d)]
        rec_starts = [(i, e) for i, e in mine if e[1] == rec_key and e[0] == "start"]
        rec_ends = [e for _, e in mine if e[1] == rec_key and e[0] == "end"]
        assert len(rec_starts) == 1 and len(rec_ends) == 1, (key, mine)
        (rec_at, (_, _, cond)), (_, _, _, created) = rec_starts[0], rec_ends[0]
        assert cond is if_absent and created, (key, rec_starts, rec_ends)
        output_ends = {e[1]: i for i, e in mine if e[0] == "end" and e[1] != rec_key}
        assert set(output_ends) == listed, key
        late = [k for k, i in output_ends.items() if i > rec_at]
        assert not late, f"{key}: {late} written after its record began"


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_are_put_before_the_record_which_is_created_if_absent(
    kind, request, tmp_path, sources, species_model
):
    dst = RecordingStore(make_store(kind, request, tmp_path))
    items, outcomes = explain_store(sources, dst, species_model, run_id="one", save_inputs=True)
    keys = [it.key for it in items]
    assert sorted(o.status for o in outcomes) == ["failed", "failed", "ok", "ok"]
    assert_outputs_then_record(dst, keys, if_absent=True)  # no record existed: create only
    # A forced rerun replaces the records (unconditional put), outputs still first.
    dst.events.clear()
    explain_store(sources, dst, species_model, run_id="two", force=True, save_inputs=True)
    assert_outputs_then_record(dst, keys, if_absent=False)


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_create_of_a_key_is_refused_and_keeps_the_first_bytes(kind, request, tmp_path):
    store = make_store(kind, request, tmp_path)
    assert store.put("a/record.json", b"first", if_absent=True) is True
    assert store.put("a/record.json", b"second", if_absent=True) is False
    assert store.get("a/record.json")[0] == b"first"
    # Creates racing for one key: exactly one wins, and its bytes are the ones kept.
    with ThreadPoolExecutor(8) as pool:
        won = list(
            pool.map(
                lambda i: store.put("b/record.json", f"writer {i}".encode(), if_absent=True),
                range(8),
            )
        )
    assert won.count(True) == 1
    assert store.get("b/record.json")[0] == f"writer {won.index(True)}".encode()
    # A plain put does overwrite: the refusals above are the condition's doing.
    assert store.put("a/record.json", b"third") is True
    assert store.get("a/record.json")[0] == b"third"


def test_a_redelivered_task_rewrites_byte_identical_outputs(tmp_path, sources, species_checkpoint):
    from echocam.explain.model import load_model

    dst = RecordingStore(LocalStore(tmp_path / "out"))
    items, outcomes = explain_store(
        sources, dst, load_model(str(species_checkpoint)), run_id="r", top_k=2
    )
    names = ("cam.npz", "spectrogram.png", "overlay.jpg")
    ok = [o.key for o in outcomes if o.status == "ok"]
    assert len(ok) == 2
    first = {f"{k}/{n}": (dst.inner.root / k / n).read_bytes() for k in ok for n in names}
    # The worker died after the outputs, before the records: the task comes back to another
    # process (a freshly loaded model), finds no record, and writes everything again.
    for it in items:
        (dst.inner.root / output_dir(it.key) / "record.json").unlink()
    dst.events.clear()
    explain_store(sources, dst, load_model(str(species_checkpoint)), run_id="r", top_k=2)
    assert set(first) <= {e[1] for e in dst.events if e[0] == "end"}  # really rewritten
    again = {key: (dst.inner.root / key).read_bytes() for key in first}
    assert [k for k in first if again[k] != first[k]] == []
