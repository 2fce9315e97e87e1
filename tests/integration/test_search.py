"""Embeddings and "more like this" over a local run of real recordings, through the CLI: the
run's table holds each current record's rows once through resumes, changes and rebuilds, and
``echocam search`` answers what a numpy brute force over the same vectors answers."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import echocam
from echocam.bucket import embeddings
from echocam.search import detection_id
from tests.helpers import chirp, marks, own_queue, recordings, start_worker, wav_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_species):
    """Four real recordings and a 5-s clip (a sweep over a stretch of one of them), explained
    into ``out`` by the trained species model."""
    d = tmp_path_factory.mktemp("search")
    src = d / "in"
    (src / "site").mkdir(parents=True)
    paths = recordings()[:4]
    for p in paths:
        (src / "site" / p.name).write_bytes(p.read_bytes())
    y, sr = sf.read(paths[0], dtype="float32", always_2d=True)
    # a sweep over a stretch of it: the windows of dawn choruses alone all embed alike here
    sweep = chirp(5.0, sr, f0=2000.0, f1=7000.0)
    (src / "clip.wav").write_bytes(wav_bytes(y[int(2.5 * sr) : int(7.5 * sr), 0] + sweep, sr))
    env = {**os.environ, "ECHOCAM_WEIGHTS": str(trained_species["ckpt"]), "ECHOCAM_THREADS": "2"}
    proc = echocam(env, "run", str(src), "--out", str(d / "out"), "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    return {"src": src, "out": d / "out", "env": env}


def table(out) -> pd.DataFrame:
    t = pq.read_table(out / embeddings.NAME)
    df = t.drop_columns(["vector"]).to_pandas()
    df["vector"] = list(embeddings.vectors(t).astype(np.float64))
    return df


def shards(out) -> list[str]:
    return sorted(p.name for p in (out / embeddings.SHARDS).glob("*.parquet"))


def test_the_run_table_holds_every_window_and_detection_of_the_current_records_once(run):
    out = run["out"]
    manifest = pd.read_json(out / "manifest.jsonl", lines=True)
    df = table(out)
    windows = int(manifest["n_windows"].sum())
    assert (df["class_name"].isna()).sum() == windows
    assert (df["class_name"].notna()).sum() == 2 * windows  # --top-k 2: two detections each
    assert sorted(df["source_key"].unique()) == sorted(manifest["source_key"])
    assert df.equals(df.sort_values(["source_key", "window_index"], kind="stable"))
    # each recording's own file holds its rows: the run's table is theirs, stacked
    order = ["window_index", "class_name"]
    for key, rows in df.groupby("source_key", sort=False):
        own = table(out / key).sort_values(order, na_position="first", kind="stable")
        rows = rows.sort_values(order, na_position="first", kind="stable")
        assert len(own) == len(rows)
        assert np.array_equal(np.stack(own["vector"]), np.stack(rows["vector"]))
    assert len(shards(out)) == 1  # compaction consolidated the chunks' shards


def test_resume_change_force_and_full_rebuild_keep_one_copy_of_each_source(run, tmp_path):
    src, out, env = run["src"], run["out"], run["env"]
    before = table(out)
    # a resume writes nothing new: the same table, still one shard
    assert echocam(env, "run", str(src), "--out", str(out), "--top-k", "2").returncode == 0
    pd.testing.assert_frame_equal(table(out).drop(columns="vector"), before.drop(columns="vector"))
    assert len(shards(out)) == 1
    # one source changed: its rows are new, the others' the same, none twice
    changed = "clip.wav"
    (src / changed).write_bytes(wav_bytes(chirp(5.0, 22050), 22050))
    assert echocam(env, "run", str(src), "--out", str(out), "--top-k", "2").returncode == 0
    after = table(out)
    assert len(after) == len(before)
    same = after["source_key"] != changed
    assert np.array_equal(np.stack(after[same]["vector"]), np.stack(before[same]["vector"]))
    assert not np.array_equal(np.stack(after[~same]["vector"]), np.stack(before[~same]["vector"]))
    # a full rebuild, from the recordings' own files alone, gives the same table
    for shard in (out / embeddings.SHARDS).glob("*.parquet"):
        shard.unlink()
    (out / embeddings.NAME).unlink()
    assert echocam(env, "manifest", str(out), "--full").returncode == 0
    rebuilt = table(out)
    pd.testing.assert_frame_equal(rebuilt.drop(columns="vector"), after.drop(columns="vector"))
    assert np.array_equal(np.stack(rebuilt["vector"]), np.stack(after["vector"]))


def brute_force(df: pd.DataFrame, query: np.ndarray, *, windows: bool, top: int, skip=None):
    """One row a window (a window's detections share its call's vector: its first stands for
    them), the window of row ``skip`` left out."""
    rows = df[df["class_name"].isna() == windows]
    rows = rows.drop_duplicates(["source_key", "window_index"], keep="first")
    if skip is not None:
        own = df.loc[skip, ["source_key", "window_index"]]
        rows = rows[(rows["source_key"] != own.iloc[0]) | (rows["window_index"] != own.iloc[1])]
    cos = np.stack(rows["vector"]) @ (query / np.linalg.norm(query))
    order = np.argsort(-cos, kind="stable")[:top]
    return rows.iloc[order].assign(similarity=cos[order])


def search(run, *args: str) -> pd.DataFrame:
    proc = echocam(run["env"], "search", str(run["out"]), *args)
    assert proc.returncode == 0, proc.stderr
    return pd.read_csv(io.StringIO(proc.stdout))


def test_search_like_a_detection_is_the_brute_force_over_the_same_vectors(run):
    df = table(run["out"])
    dets = df[df["class_name"].notna()]
    q = dets.iloc[len(dets) // 2]
    qid = detection_id(q["source_key"], q["begin_s"], q["class_name"])
    got = search(run, "--like-detection", qid, "--top", "7")
    want = brute_force(df, q["vector"], windows=False, top=7, skip=q.name)
    assert got["detection_id"].tolist() == [
        detection_id(k, b, c)
        for k, b, c in zip(want["source_key"], want["begin_s"], want["class_name"], strict=True)
    ]
    np.testing.assert_allclose(got["similarity"], want["similarity"], atol=1e-6)
    assert qid not in got["detection_id"].tolist()  # not itself
    # one class only, a floor on similarity, and the whole windows instead of boxes
    one = search(run, "--like-detection", qid, "--class", q["class_name"], "--top", "50")
    assert set(one["class_name"]) == {q["class_name"]}
    floor = float(got["similarity"].iloc[3])
    assert (search(run, "--like-detection", qid, "--min-similarity", str(floor))["similarity"]
            >= floor).all()  # fmt: skip
    win = search(run, "--like-detection", qid, "--windows", "--top", "5")
    assert win["class_name"].isna().all() and win["box"].isna().all()
    assert win["link"].str.startswith("/rec?key=").all()


def test_a_box_drawn_on_a_detection_finds_that_detection_first(run):
    """``--like KEY@T0-T1@F0-F1`` embeds the box with the run's model: drawn on a detection's
    own box, it is that detection's vector (both weighted by the window's activity map; the
    window's first-ranked detection, which comes first of the two that share it)."""
    df = table(run["out"])
    dets = df[df["class_name"].notna()]
    firsts = dets.loc[dets.groupby(["source_key", "window_index"])["probability"].idxmax()]
    # the call least like any other window's: a weakly trained model's calls can be alike
    # within float16's rounding
    v = np.stack(firsts["vector"])
    alike = v @ v.T
    np.fill_diagonal(alike, -1.0)
    q = firsts.iloc[int(np.argmin(alike.max(axis=1)))]
    print(f"the query's nearest other call: {alike.max(axis=1).min():.4f}", file=sys.stderr)
    times, freqs = f"{q['box_begin_s']}-{q['box_end_s']}", f"{q['box_low_hz']}-{q['box_high_hz']}"
    box = f"{q['source_key']}@{times}@{freqs}"
    got = search(run, "--like", box, "--top", "3")
    assert got["source_key"].iloc[0] == q["source_key"] and got["begin_s"].iloc[0] == q["begin_s"]
    assert got["similarity"].iloc[0] > 0.999


def test_like_audio_embeds_a_clip_as_the_run_did(run):
    """The 5-s clip is one window: searched with --windows, its own row comes first, at a
    similarity of one (whether or not the change test has replaced it)."""
    got = search(run, "--like-audio", str(run["src"] / "clip.wav"), "--windows", "--top", "3")
    assert got["source_key"].iloc[0] == "clip.wav" and got["similarity"].iloc[0] > 0.999


def test_bad_queries_fail_with_a_clear_message(run):
    for args, message in [
        (["--like", "site/nothing.wav"], "KEY@T0-T1"),
        (["--like-detection", "site/x.wav@0.0#nobody"], "no detection"),
    ]:
        proc = echocam(run["env"], "search", str(run["out"]), *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    proc = echocam(run["env"], "search", str(run["out"] / "site"), "--like-detection", "a@0#b")
    assert proc.returncode == 2 and "run.json" in proc.stderr


# -- on the workers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
@marks("redis", "s3", "worker")
def bucket_run(tmp_path_factory, species_checkpoint, request):
    """A bucket run (SeaweedFS, Redis, two workers) of the real recordings, small row groups:
    its table has several to share out."""
    d = tmp_path_factory.mktemp("bucket-search")
    with RedisServer() as redis_srv, SeaweedS3() as s3:
        s3.create_bucket("audio")
        s3.create_bucket("runs")
        client = s3.client()
        for p in recordings():
            client.put_object(Bucket="audio", Key=f"site/{p.name}", Body=p.read_bytes())
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_QUEUE": own_queue(request),
            "ECHOCAM_WEIGHTS": str(species_checkpoint),
            "ECHOCAM_THREADS": "1",
        }
        workers = [start_worker(request, env, name=f"s{i}", log_dir=d) for i in (1, 2)]
        try:
            proc = echocam(env, "produce", "s3://audio/site", "--out", "s3://runs/one",
                           "--wait", "--timeout", "600", "--task-size", "2")  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            # the table again in row groups of 8 rows, as a big run's would be many
            t = pq.read_table(io.BytesIO(client.get_object(Bucket="runs", Key="one/" +
                              embeddings.NAME)["Body"].read()))  # fmt: skip
            buf = io.BytesIO()
            pq.write_table(t, buf, row_group_size=8)
            client.put_object(Bucket="runs", Key="one/" + embeddings.NAME, Body=buf.getvalue())
            yield {"env": env, "table": t, "workers": workers}
        finally:
            for w in workers:
                w.stop()


def test_distributed_search_answers_what_the_local_search_answers(bucket_run):
    t, env = bucket_run["table"], bucket_run["env"]
    dets = t.filter(t.column("class_name").is_valid())
    i = dets.num_rows // 2
    qid = detection_id(
        *(dets.column(n)[i].as_py() for n in ("source_key", "begin_s", "class_name"))
    )
    local = echocam(env, "search", "s3://runs/one", "--like-detection", qid, "--top", "9")
    assert local.returncode == 0, local.stderr
    for parts in ("3", "0"):  # three parts, and one a row group
        spread = echocam(env, "search", "s3://runs/one", "--like-detection", qid, "--top", "9",
                         "--distributed", "--parts", parts)  # fmt: skip
        assert spread.returncode == 0, spread.stderr + bucket_run["workers"][0].log_tail()
        assert spread.stdout == local.stdout and len(local.stdout.splitlines()) == 10
    logs = [w.log_path.read_text(errors="replace") for w in bucket_run["workers"]]
    assert all("echocam.search" in log for log in logs), "both workers took parts"


def test_exclude_reviewed_leaves_out_judged_detections_only(run, tmp_path):
    import shutil

    from echocam.bucket import reviews
    from echocam.bucket.storage import LocalStore

    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    copy = {**run, "out": out}
    dets = table(out)
    dets = dets[dets["class_name"].notna()]
    q = dets.iloc[len(dets) // 2]
    qid = detection_id(q["source_key"], q["begin_s"], q["class_name"])
    before = search(copy, "--like-detection", qid, "--top", "8")["detection_id"].tolist()
    table_rows = {
        detection_id(r["source_key"], r["begin_s"], r["class_name"]): r
        for r in pq.read_table(out / "detections.parquet").to_pylist()
    }
    run_json = json.loads((out / "run.json").read_text())
    judged = [
        reviews.verdict(table_rows[i], verdict=v, reviewer="ann", run=run_json)
        for i, v in zip(before[:4], ("yes", "no", "yes", "skip"), strict=True)
    ]
    reviews.write_batch(LocalStore(str(out)), judged)
    after = search(copy, "--like-detection", qid, "--top", "5", "--exclude-reviewed")
    rest = [i for i in before if i not in before[:3]]  # a skip is not a label: kept
    assert after["detection_id"].tolist() == rest[:5]
    bob = search(
        copy, "--like-detection", qid, "--top", "8", "--exclude-reviewed", "--reviewer", "bob"
    )
    assert bob["detection_id"].tolist() == before
