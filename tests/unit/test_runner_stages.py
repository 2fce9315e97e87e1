"""run_chunks's overlapped stages, in process: order, completeness, and what a failure leaves."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from echocam.bucket.chunking import chunked
from echocam.bucket.storage import LocalStore
from echocam.explain.pipeline import Explainer
from echocam.run.runner import run_chunks
from echocam.settings import Params
from tests.helpers import chirp, wav_bytes


@pytest.fixture()
def stores(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):  # 2-s chirps at three rates: one short window each
        sr = (22050, 44100, 16000)[i % 3]
        (src / f"rec{i}.wav").write_bytes(wav_bytes(chirp(2.0, sr, f0=500 + 300 * i), sr))
    (src / "rec3.wav").write_bytes(b"not audio")  # a bad one in the middle
    return LocalStore(src), LocalStore(tmp_path / "out")


class CountingExplainer(Explainer):
    """Records which thread ran each stage, and can fail its n-th device stage."""

    def __init__(self, *args, fail_compute: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.fail_compute, self.computed = fail_compute, 0
        self.threads: dict[str, set[str]] = {"decode": set(), "compute": set(), "finish": set()}

    def decode(self, sources):
        self.threads["decode"].add(threading.current_thread().name)
        return super().decode(sources)

    def compute(self, decoded):
        self.computed += 1
        self.threads["compute"].add(threading.current_thread().name)
        if self.computed == self.fail_compute:
            raise RuntimeError("device fell over")
        return super().compute(decoded)

    def finish(self, computed):
        self.threads["finish"].add(threading.current_thread().name)
        return super().finish(computed)


def test_chunks_flow_through_three_threads_and_come_back_in_order(stores, species_model):
    src, dst = stores
    items = list(src.list(suffixes=(".wav",)))
    seen = []
    with ThreadPoolExecutor(4) as pool:
        ex = CountingExplainer(species_model, Params(), device="cpu", pool=pool)
        outcomes = run_chunks(
            chunked(items, 2),
            src=src,
            dst=dst,
            explainer=ex,
            run_id="r1",
            pool=pool,
            on_chunk=lambda done: seen.append([o.key for o in done]),
        )
    assert [o.key for o in outcomes] == [it.key for it in items]
    assert seen == [[it.key for it in items[i : i + 2]] for i in range(0, 6, 2)]
    assert [o.error_code for o in outcomes if o.status == "failed"] == ["undecodable"]
    assert all(o.written for o in outcomes)
    for it in items:  # every record written, outputs before it
        rec = json.loads((dst.root / it.key / "record.json").read_text())
        assert rec["run_id"] == "r1"
        for key in rec.get("outputs", {}).values():
            assert isinstance(key, list) or (dst.root / key).is_file()
    assert ex.threads["decode"] == {"echocam-prefetch_0"}
    assert ex.threads["compute"] == {threading.current_thread().name}
    assert ex.threads["finish"] == {"echocam-finish_0"}


def test_a_device_failure_lets_the_chunk_before_finish_writing(stores, species_model):
    # The caller (a worker task) answers an exception with failure records for what is not
    # done; the chunk already computed must have its real records by then, not race them.
    src, dst = stores
    items = list(src.list(suffixes=(".wav",)))
    with ThreadPoolExecutor(4) as pool:
        ex = CountingExplainer(species_model, Params(), device="cpu", pool=pool, fail_compute=2)
        with pytest.raises(RuntimeError, match="device fell over"):
            run_chunks(chunked(items, 2), src=src, dst=dst, explainer=ex, run_id="r", pool=pool)
    written = sorted(p.parent.name for p in dst.root.rglob("record.json"))
    assert written == [it.key for it in items[:2]]  # chunk 1 complete, nothing of chunk 2
    # and a rerun skips what is done
    with ThreadPoolExecutor(4) as pool:
        ex = CountingExplainer(species_model, Params(), device="cpu", pool=pool)
        again = run_chunks(chunked(items, 2), src=src, dst=dst, explainer=ex, run_id="r", pool=pool)
    assert [o.written for o in again] == [False, False, True, True, True, True]
