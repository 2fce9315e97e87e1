"""The done index against a real S3 server (SeaweedFS, requests counted by the fault proxy) and a
real directory: what the producer and the manifest step decide without reading records, and
that every crash state between a writer's steps makes them read the record instead.

Records here are written by the workers' own code path (``runner.record_failures``: records,
markers, shards) with a permanent error code, so no model is needed.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.faultproxy import FaultProxy
from devtools.services import SeaweedS3
from echocam.bucket import index, manifest, plan, records
from echocam.bucket.protocol import DONE, RESUME, Redo
from echocam.bucket.storage import LocalStore, ObjectInfo, S3Store, s3_client
from echocam.run import runner
from tests.helpers import marks

BUCKET = "index-test"
FP, OTHER_FP = "a" * 64, "b" * 64
MODEL = {"arch": "resnet18", "sha256": "0" * 64, "weights": "random"}
# Keys whose order differs between S3's byte order and a folder walk's (SeaweedFS, a directory):
# names continuing with a character below "/" next to folders of the same stem.
TRICKY = [
    "a/x.wav",
    "a b/x.wav",
    "a!/x.wav",
    "a-b.wav",
    "a.b/x.wav",
    "a0.wav",
    "A.wav",
    "é/ü.wav",
    "sp ace/#hash/%pct.wav",
    'q"uote.wav',
    "site 1/2019-05/rec 1.wav",
    "site 1/2019/rec.wav",
    "site 10/rec.wav",
    "tab\there.wav",
]


def test_index_keys_sort_like_their_sources_in_byte_and_folder_order():
    def folder_order(k: str) -> list[str]:
        return k.split("/")

    for order in (lambda k: k.encode(), folder_order):
        by_source = sorted(TRICKY, key=order)
        by_index = sorted(TRICKY, key=lambda k: order(index.folder(k) + "m"))
        assert by_index == by_source
    for k in TRICKY:
        assert index.decode(index.folder(k)[len(index.INDEX) : -2]) == k
    assert index.folder("a//b.wav") is None and index.folder("../x.wav") is None
    # names nobody encoded (a hand-made folder) are kept as they are, never an error
    assert [index.decode(e) for e in ("a#zz", "a#", "a#4")] == ["a#zz", "a#", "a#4"]


class PlainLookup:
    """:class:`index.Lookup` as first written, without its shortcuts: what it must answer."""

    def __init__(self, groups, *, ahead):
        self.groups, self.ahead, self.held = iter(groups), ahead, {}
        self.head = next(self.groups, None)

    @staticmethod
    def before(a: str, b: str) -> bool:
        return a < b and a.split("/") < b.split("/")

    def find(self, source):
        while (
            self.head is not None
            and not self.before(source, self.head.source)
            and len(self.held) < self.ahead
        ):
            g = self.head
            if g.source in self.held:
                self.held[g.source].other = True
            else:
                self.held[g.source] = g
            self.head = next(self.groups, None)
        found = self.held.pop(source, None)
        if found is None and self.head is not None and not self.before(source, self.head.source):
            found = index.Group(source, other=True)
        while self.held and self.before(next(iter(self.held)), source):
            del self.held[next(iter(self.held))]
        if len(self.held) > self.ahead // 2:
            self.held = {k: g for k, g in self.held.items() if not self.before(k, source)}
        return found


def test_lookup_answers_as_its_plain_definition_whatever_the_orders():
    """Its shortcuts (the next group is the asked source's; an exhausted index) change no
    answer: keys with characters below "/" next to folders, byte and folder orders mixed,
    duplicates, sources on one side only, any read-ahead."""
    rng = random.Random(7)
    orders = (lambda k: k, lambda k: k.split("/"))
    marker = index.Marker("0" * 32, FP, "0" * 16, "ok")
    for _ in range(3000):
        keys = {"".join(rng.choices("ab/-. !#", k=rng.randint(1, 6))) for _ in range(12)}
        listed = sorted(keys, key=rng.choice(orders))
        sources = [k for k in keys if rng.random() < 0.7] + rng.choices(sorted(keys), k=2)
        sources.sort(key=rng.choice(orders))
        ahead = rng.choice([0, 1, 2, 3, 20_000])
        got = index.Lookup((index.Group(s, [marker]) for s in sources), ahead=ahead)
        want = PlainLookup((index.Group(s, [marker]) for s in sources), ahead=ahead)
        for k in listed:
            assert got.find(k) == want.find(k), (listed, sources, ahead, k)


def segment(store: LocalStore, text: str) -> str:
    """A segment object of ``text`` (gzip'd as compaction writes them); its key."""
    key = index.segment_key()
    path = store.root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return key


def certain(groups) -> list[tuple[str, str | None]]:
    """(source, its current marker's name, None where unsure) of each group."""
    return [(g.source, g.current and g.current.name) for g in groups]


def test_segments_read_back_their_markers_and_doubt_any_line_they_cannot_parse(tmp_path):
    """Escaped sources and every kind of ETag come back as written, over several of gzip's
    blocks; a name this version cannot parse (or none) makes its source unsure, never skipped;
    the last line needs no newline; a source in two segments is certain where they agree."""
    store = LocalStore(tmp_path)
    etags = ["none", "0123456789abcdef" * 2, "0123456789abcdef" * 2 + "-12", "h" + "e" * 64]
    written = [
        (k, index.Marker(etags[i % 4], FP, f"{i:016x}", ["ok", "undecodable"][i % 2]))
        for i, k in enumerate(
            sorted({*TRICKY, *(f"site {i:04d}/rec.wav" for i in range(3000))}, key=index.encode)
        )
    ]
    path = tmp_path / index.segment_key()
    path.parent.mkdir(parents=True)
    assert index.write_segment(path, written) == len(written)
    assert len(gzip.decompress(path.read_bytes())) > 4 * (1 << 16)  # several blocks
    key = str(path.relative_to(tmp_path))
    assert certain(index.folded(store, [key])) == [(k, m.name) for k, m in written]

    ok = index.Marker("0" * 32, FP, "0" * 16, "ok").name
    lines = [
        f"a.wav\t{ok}",
        f"b.wav\t{ok.replace('.ok', '.OK')}",  # an outcome this version does not know
        f"c.wav\t-{ok}",  # a segment holds no tombstones
        "d.wav",  # no name at all
        f"e.wav\t{ok}\tmore",
        f"f.wav\t{ok}",  # the last line, without its newline
    ]
    one = segment(store, "\n".join(lines))
    want = [("a.wav", ok), ("b.wav", None), ("c.wav", None), ("d.wav", None), ("e.wav", None)]
    assert certain(index.folded(store, [one])) == [*want, ("f.wav", ok)]

    other = index.Marker("1" * 32, FP, "0" * 16, "ok").name
    two = segment(store, f"a.wav\t{ok}\nf.wav\t{other}\ng.wav\t{ok}\n")
    assert certain(index.folded(store, [one, two])) == [*want, ("f.wav", None), ("g.wav", ok)]


@pytest.fixture(scope="module")
@marks("s3")
def s3():
    with SeaweedS3() as server, pytest.MonkeyPatch.context() as mp:
        server.create_bucket(BUCKET)
        for name, value in server.env().items():  # credentials for echocam's own S3 client
            mp.setenv(name, value)
        yield server


@pytest.fixture
def proxied(s3, request):
    """(store of s3://BUCKET/<test name>, proxy whose log counts its requests)."""
    with FaultProxy(s3.port, fail_rate=0) as proxy:
        prefix = request.node.name.replace("[", "-").replace("]", "")
        client = s3_client(endpoint_url=proxy.endpoint_url, retries=2)
        yield S3Store(f"s3://{BUCKET}/{prefix}", client), proxy


def put_sources(store, keys: list[str], *, body: bytes = b"x") -> list[ObjectInfo]:
    for k in keys:
        store.put(f"in/{k}", body + k.encode())
    sub = type(store)(f"{store.uri}/in", store.client) if isinstance(store, S3Store) else None
    return list((sub or LocalStore(store.root / "in")).list())


def sub_store(store, name: str):
    if isinstance(store, S3Store):
        return S3Store(f"{store.uri}/{name}", store.client)
    return LocalStore(store.root / name)


def fail_records(dst, items, *, fingerprint=FP, code="undecodable", run_id="r1"):
    return runner.record_failures(
        items,
        dst=dst,
        model=MODEL,
        fingerprint=fingerprint,
        run_id=run_id,
        code=code,
        message="test",
    )


def decide(src, dst, *, redo=RESUME, fingerprint=FP) -> dict[str, str | None]:
    with ThreadPoolExecutor(4) as pool:
        return {
            d.item.key: d.reason
            for d in plan.plan(
                src,
                dst,
                extensions=(".wav",),
                fingerprint=fingerprint,
                run_id="new-run",
                redo=redo,
                pool=pool,
                chunk=5,
                page_size=3,  # several pages of both listings
            )
        }


def record_gets(requests) -> list[str]:
    return [q.path for q in requests if q.method == "GET" and q.path.endswith("/record.json")]


@pytest.mark.parametrize("where", ["s3", "directory"])
def test_rerun_decides_every_recording_from_listings_alone(proxied, tmp_path, where):
    store, proxy = proxied
    if where == "directory":
        store = LocalStore(tmp_path)
    src, dst = sub_store(store, "in"), sub_store(store, "out")
    items = put_sources(store, TRICKY)
    done, todo = items[::2], items[1::2]
    fail_records(dst, done)
    before = len(proxy.log)
    got = decide(src, dst)
    assert got == {**{it.key: DONE for it in done}, **{it.key: None for it in todo}}
    if where == "s3":  # listings only: no record read, a handful of LIST pages
        assert record_gets(_since(proxy, before)) == []
        assert {q.method for q in _since(proxy, before)} == {"GET"}
        assert len(_since(proxy, before)) <= 2 * (len(TRICKY) // 3 + 2)
    # a new fingerprint, and a changed source (new ETag), need work: no record read either
    assert set(decide(src, dst, fingerprint=OTHER_FP).values()) == {None}
    store.put(f"in/{done[0].key}", b"changed")
    assert decide(src, dst)[done[0].key] is None


def _since(proxy, n: int):
    with proxy.lock:
        return list(proxy.log[n:])


def test_every_crash_state_of_a_writer_reads_the_record(proxied):
    """A writer's steps: intent, old marker deleted, outputs, record, new marker, intent
    deleted.  Stopped after any of them, the source is unsure (or, with no folder, enqueued):
    the record decides, never a stale marker."""
    store, proxy = proxied
    src, dst = sub_store(store, "in"), sub_store(store, "out")
    keys = [f"rec{i}.wav" for i in range(6)]
    items = {it.key: it for it in put_sources(store, keys)}
    fail_records(dst, list(items.values()))  # current records (fingerprint FP) with markers
    old = {k: index.read(dst, records.record_key(k)) for k in keys}

    def new_record(key: str, fp: str) -> tuple[dict, bytes]:
        base = records.new(
            source_key=key, size=1, etag=items[key].etag, model=MODEL, fingerprint=fp
        )
        rec = records.stamped(records.failed(base, code="empty", message="x"), run_id="r2")
        return rec, records.dumps(rec)

    def rewrite(key: str, *, steps: int) -> None:
        """Replace ``key``'s record by one of OTHER_FP, stopping after ``steps`` steps."""
        rec, data = new_record(key, OTHER_FP)
        new_key = index.marker_key(rec, index.digest(data))
        intent = index.folder(key) + "~" + "0" * 32
        actions = [
            lambda: dst.put(intent, b""),
            lambda: dst.delete([old[key].marker_key]),
            lambda: dst.put(rec["record_key"], data),
            lambda: dst.put(new_key, b""),
            lambda: dst.delete([intent]),
        ]
        for act in actions[:steps]:
            act()

    for i, key in enumerate(keys[:5]):
        rewrite(key, steps=i + 1)
    before = len(proxy.log)
    for fp in (FP, OTHER_FP):
        got = decide(src, dst, fingerprint=fp)
        # FP: skipped only where the record still is FP's (crash before the record write)
        want_fp = {keys[0]: DONE, keys[1]: DONE, keys[2]: None, keys[3]: None, keys[4]: None}
        want_other = {keys[0]: None, keys[1]: None, keys[2]: DONE, keys[3]: DONE, keys[4]: DONE}
        want = want_fp if fp == FP else want_other
        assert {k: got[k] for k in keys[:5]} == want, fp
        assert got[keys[5]] == (DONE if fp == FP else None)
    # read: those with an intent left (steps 1-4), each once per plan; none of the others
    gets = record_gets(_since(proxy, before))
    assert sorted(gets) == sorted(
        f"/{BUCKET}/{dst.prefix}/{k}/record.json" for k in keys[:4] for _ in range(2)
    )


def test_no_folder_is_work_but_retry_failed_reads_it(proxied):
    """Outputs from before the index (a record, no marker): a plain run enqueues it (the worker
    reads the record and repairs the marker); --retry-failed, which skips recordings with no
    record, reads it."""
    store, proxy = proxied
    src, dst = sub_store(store, "in"), sub_store(store, "out")
    (item,) = put_sources(store, ["old.wav"])
    fail_records(dst, [item])
    marker = index.read(dst, records.record_key(item.key)).marker_key
    dst.delete([marker])
    assert decide(src, dst) == {item.key: None}
    before = len(proxy.log)
    assert decide(src, dst, redo=Redo(failed=True)) == {item.key: None}  # failed: redone
    assert len(record_gets(_since(proxy, before))) == 1
    fail_records(dst, [item], run_id="r3")  # the worker finds it done: the marker is back
    assert decide(src, dst) == {item.key: DONE}


def test_compaction_reads_shards_not_records_and_keeps_each_source_once(proxied):
    store, proxy = proxied
    dst = sub_store(store, "out")
    keys = [f"r/{i:03d}.wav" for i in range(40)]
    items = put_sources(store, keys)
    dst.put(index.COMPLETE, b"{}")
    for i in range(0, 40, 8):  # five chunks: five shards
        fail_records(dst, items[i : i + 8])
    for i in range(0, 20, 10):  # half rewritten with another fingerprint: newer shards
        fail_records(dst, items[i : i + 10], fingerprint=OTHER_FP, code="empty", run_id="r2")
    dst.delete([next(iter(dst.list(under=manifest.SHARDS))).key])  # a shard lost: read those
    before = len(proxy.log)
    summary = manifest.compact(dst, threads=4, page_size=100)
    reqs = _since(proxy, before)
    rows = manifest_rows(dst)
    assert sorted(r["source_key"] for r in rows) == keys
    assert {r["source_key"]: r["fingerprint"] for r in rows} == {
        k: OTHER_FP if i < 20 else FP for i, k in enumerate(keys)
    }
    assert summary["by_error_code"] == {"empty": 20, "undecodable": 20}
    shard_gets = [q for q in reqs if q.method == "GET" and manifest.SHARDS in q.path]
    assert len(shard_gets) == 6  # 7 shards, one deleted
    assert len(record_gets(reqs)) <= 10  # only the lost shard's sources are read
    # consolidated: the next compaction reads one shard and no record
    before = len(proxy.log)
    manifest.compact(dst, threads=4, page_size=100)
    reqs = _since(proxy, before)
    assert [q for q in reqs if q.method == "GET" and manifest.SHARDS in q.path][1:] == []
    assert record_gets(reqs) == []
    assert sorted(r["source_key"] for r in manifest_rows(dst)) == keys


def manifest_rows(dst) -> list[dict]:
    data, _ = dst.get(manifest.MANIFEST_JSONL)
    return [json.loads(line) for line in data.decode().splitlines()]


def test_a_worker_replaces_a_record_in_the_order_the_readers_rely_on(proxied):
    """As the fault proxy sees it: intent, the old marker's tombstone, old marker deleted,
    record, new marker, intent deleted; a record found done gets its marker put again and its
    row in the chunk's shard."""
    store, proxy = proxied
    dst = sub_store(store, "out")
    item, done = put_sources(store, ["one.wav", "two.wav"])
    fail_records(dst, [item, done])
    old = index.read(dst, records.record_key(item.key)).marker_key
    before = len(proxy.log)
    fail_records(dst, [item], fingerprint=OTHER_FP, code="empty", run_id="r2")
    fail_records(dst, [done], run_id="r2")  # done: nothing rewritten
    steps = []
    for q in _since(proxy, before):
        if q.method in ("PUT", "DELETE") and (item.key in q.path or manifest.SHARDS in q.path):
            name = q.path.rsplit("/", 1)[-1]
            kind = (
                "intent" if name.startswith("~")
                else "tombstone" if name.startswith("-")
                else "old marker" if q.path.endswith(old)
                else "marker" if index.INDEX in q.path
                else "shard" if manifest.SHARDS in q.path
                else name
            )  # fmt: skip
            steps.append((q.method, kind))
    assert steps == [
        ("PUT", "intent"),
        ("PUT", "tombstone"),
        ("DELETE", "old marker"),
        ("PUT", "record.json"),
        ("PUT", "marker"),
        ("DELETE", "intent"),
        ("PUT", "shard"),
        ("PUT", "shard"),  # the second call's: the done record's row
    ]
    repaired = [q for q in _since(proxy, before) if q.method == "PUT" and done.key in q.path]
    assert [q.path.endswith(".undecodable") and index.INDEX in q.path for q in repaired] == [True]


def test_outputs_older_than_the_index_are_compacted_from_records_once(proxied):
    """No sentinel (records written before the index, markers gone): the first compaction reads
    every record and puts their markers and the sentinel; the next reads none."""
    store, proxy = proxied
    dst = sub_store(store, "out")
    keys = [f"old/{i:02d}.wav" for i in range(12)]
    fail_records(dst, put_sources(store, keys))
    dst.delete([o.key for o in dst.list(under=index.INDEX)])  # as written before the index
    dst.delete([o.key for o in dst.list(under=manifest.SHARDS)])
    for full_pass in (True, False):
        before = len(proxy.log)
        manifest.compact(dst, threads=4)
        assert len(record_gets(_since(proxy, before))) == (len(keys) if full_pass else 0)
        assert sorted(r["source_key"] for r in manifest_rows(dst)) == keys
    assert dst.get(index.COMPLETE)[0]
    view = index.View(dst)
    assert all(view.find(k).current for k in keys)  # one segment holds every marker


def folder_objects(dst) -> list[str]:
    """The index's objects other than its segments: markers and intents."""
    return [o.key for o in dst.list(under=index.INDEX) if not o.key.startswith(index.SEGMENTS)]


def test_a_rerun_after_compaction_reads_one_segment_not_markers_or_records(proxied):
    """Compaction folds the markers into one segment and deletes them; a re-run then lists the
    sources, reads the segment, lists an empty index and reads no record.  A changed object and
    a changed parameter are still redone, a record replaced after folding is decided from its
    writer's tombstone of the folded marker and its new marker (no read, by the producer or by
    the next compaction), and the manifest keeps every source once throughout."""
    store, proxy = proxied
    src, dst = sub_store(store, "in"), sub_store(store, "out")
    items = put_sources(store, TRICKY)  # sources whose byte and folder orders differ
    dst.put(index.COMPLETE, b"{}")
    fail_records(dst, items)
    manifest.compact(dst, threads=4, page_size=3)
    assert folder_objects(dst) == [] and len(index.segment_keys(dst)) == 1
    before = len(proxy.log)
    assert decide(src, dst) == {it.key: DONE for it in items}
    reqs = _since(proxy, before)
    assert record_gets(reqs) == []
    segment_gets = [q for q in reqs if q.path.endswith(".tsv.gz")]
    assert len(segment_gets) == 1
    # a new parameter, --force, and a changed source: work, still without a record read
    assert set(decide(src, dst, fingerprint=OTHER_FP).values()) == {None}
    assert set(decide(src, dst, redo=Redo(force=True)).values()) == {None}
    changed = items[3]
    store.put(f"in/{changed.key}", b"changed")
    got = decide(src, dst)
    assert got == {it.key: None if it is changed else DONE for it in items}
    assert record_gets(_since(proxy, before)) == []
    # the worker redoes it: a tombstone rules out the segment's marker, the new one is certain
    (new_item,) = [it for it in put_sources(store, []) if it.key == changed.key]
    fail_records(dst, [new_item], run_id="r2")
    before = len(proxy.log)
    assert decide(src, dst) == {it.key: DONE for it in items}
    manifest.compact(dst, threads=4, page_size=3)
    assert record_gets(_since(proxy, before)) == []
    rows = manifest_rows(dst)
    assert sorted(r["source_key"] for r in rows) == sorted(TRICKY)
    assert {r["source_etag"] for r in rows if r["source_key"] == changed.key} == {new_item.etag}
    assert folder_objects(dst) == [] and len(index.segment_keys(dst)) == 1
    before = len(proxy.log)
    assert decide(src, dst) == {it.key: DONE for it in items}
    assert record_gets(_since(proxy, before)) == []
    # --retry-failed: every record failed, so every one is redone, decided from the segment
    assert set(decide(src, dst, redo=Redo(failed=True)).values()) == {None}
    assert record_gets(_since(proxy, before)) == []


def test_a_stale_marker_put_back_after_folding_makes_its_source_unsure(proxied):
    """A worker that found a record current puts its marker back (repair) late, after another
    writer replaced the record and compaction folded the new marker: the folder then holds
    only the stale marker, and the segment the current one.  The two disagree: the record is
    read, and decides."""
    store, proxy = proxied
    src, dst = sub_store(store, "in"), sub_store(store, "out")
    item, other = put_sources(store, ["one.wav", "two.wav"])
    dst.put(index.COMPLETE, b"{}")
    fail_records(dst, [item, other])
    stale = index.read(dst, records.record_key(item.key))
    fail_records(dst, [item], fingerprint=OTHER_FP, code="empty", run_id="r2")
    manifest.compact(dst, threads=4)
    index.repair(dst, stale)  # the late repair: the folder has FP's marker again
    assert folder_objects(dst) == [stale.marker_key]
    before = len(proxy.log)
    assert decide(src, dst) == {item.key: None, other.key: DONE}  # FP: the record is OTHER_FP's
    assert decide(src, dst, fingerprint=OTHER_FP) == {item.key: DONE, other.key: None}
    assert len(record_gets(_since(proxy, before))) == 2  # item's, once per plan


def test_a_compaction_during_a_run_makes_the_producer_read_the_new_segment(proxied):
    """The producer lists the segments, then streams the folder listing; a compaction that
    finishes in between moves markers from the folders into a segment the producer did not
    list.  The producer checks the segments once per chunk and, when they changed, decides the
    rest from a new view: a record replaced before that compaction is never skipped on the old
    segment's marker."""
    store, proxy = proxied
    src, dst = sub_store(store, "in"), sub_store(store, "out")
    keys = [f"r{i:03d}.wav" for i in range(60)]
    items = put_sources(store, keys)
    dst.put(index.COMPLETE, b"{}")
    fail_records(dst, items)
    manifest.compact(dst, threads=4)  # segment 1: every source at FP
    last = items[-1]
    fail_records(dst, [last], fingerprint=OTHER_FP, code="empty", run_id="r2")
    for it in items[:50]:  # a long folder listing before the replaced record's marker
        index.repair(dst, index.read(dst, records.record_key(it.key)))
    with ThreadPoolExecutor(4) as pool:
        decisions = plan.plan(
            src, dst, extensions=(".wav",), fingerprint=FP, run_id="new-run", pool=pool,
            chunk=5, page_size=3,
        )  # fmt: skip
        got = {d.item.key: d.reason for d in itertools.islice(decisions, 5)}
        manifest.compact(dst, threads=4)  # segment 2 replaces 1; folder markers folded
        got.update({d.item.key: d.reason for d in decisions})
    assert got == {**{k: DONE for k in keys[:-1]}, last.key: None}


@pytest.mark.parametrize("where", ["s3", "directory"])
def test_compaction_leaves_a_writers_intent_and_its_folder(proxied, tmp_path, where):
    """Compaction deletes the folders of the markers it folded, but one that still holds a
    writer's intent stays, with the intent (its source stays unsure until the writer ends)."""
    store, _ = proxied
    if where == "directory":
        store = LocalStore(tmp_path)
    src, dst = sub_store(store, "in"), sub_store(store, "out")
    busy, idle = put_sources(store, ["busy.wav", "idle.wav"])
    dst.put(index.COMPLETE, b"{}")
    fail_records(dst, [busy, idle])
    intent = index.folder(busy.key) + "~" + "1" * 32
    dst.put(intent, b"")
    manifest.compact(dst, threads=4)
    assert folder_objects(dst) == [intent]
    got = decide(src, dst, redo=Redo(failed=True))  # unsure: read, and redone (it failed)
    assert got == {busy.key: None, idle.key: None}
    assert decide(src, dst) == {busy.key: DONE, idle.key: DONE}
