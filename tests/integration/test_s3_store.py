"""Store.head and Store.get_range (what `echocam view` streams audio and tables with), on a
directory and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import pytest

from devtools.services import SeaweedS3
from echocam.bucket.storage import LocalStore, S3Store
from tests.helpers import marks

DATA = bytes(range(256)) * 40 + b"tail"


@pytest.fixture(scope="module")
@marks("s3")
def s3():
    with SeaweedS3() as server:
        server.create_bucket("ranges")
        yield server


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    """An empty store of the test's own: a directory, or a prefix of a SeaweedFS bucket."""
    if request.param == "local":
        store = LocalStore(tmp_path)
    else:
        uri = f"s3://ranges/some prefix/{request.node.name}"
        store = S3Store(uri, request.getfixturevalue("s3").client())
    store.put("a/b.bin", DATA)
    return store


def test_head_gives_the_size_without_reading(store):
    info = store.head("a/b.bin")
    assert info.key == "a/b.bin" and info.size == len(DATA)
    with pytest.raises(FileNotFoundError):
        store.head("a/none.bin")


def test_get_range_reads_exactly_the_bytes_asked(store):
    assert store.get_range("a/b.bin", 0, 10) == DATA[:10]
    assert store.get_range("a/b.bin", 300, 301) == DATA[300:301]
    assert store.get_range("a/b.bin", 5000, 10**9) == DATA[5000:]  # clipped to the end
    assert store.get_range("a/b.bin", len(DATA) - 4, len(DATA)) == b"tail"


@pytest.mark.parametrize("start,stop", [(len(DATA), len(DATA) + 5), (5, 5), (-1, 3), (9, 2)])
def test_get_range_refuses_empty_or_past_the_end(store, start, stop):
    with pytest.raises(ValueError):
        store.get_range("a/b.bin", start, stop)


def test_get_range_of_a_missing_object(store):
    with pytest.raises(FileNotFoundError):
        store.get_range("a/none.bin", 0, 1)


def test_local_ranges_stay_under_the_root(tmp_path):
    (tmp_path / "outside.bin").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.bin").symlink_to(tmp_path / "outside.bin")
    store = LocalStore(root)
    for key in ("../outside.bin", "link.bin"):
        with pytest.raises(ValueError):
            store.get_range(key, 0, 1)
        with pytest.raises(ValueError):
            store.head(key)


# -- S3Store's requests through obstore -----------------------------------------------------

#: keys as echocam writes them: the done index's escapes and ends, spaces, non-ASCII, a query's
#: characters; and a key obstore's paths cannot hold (an empty segment), through boto3
KEYS = ["_index/clip#20one.wav!/~0f3a", "sp ace/é/x%41.wav", "q?x&y=1+2.json"]
BOTO3_ONLY = ["a//b.json"]


@pytest.mark.s3
def test_s3_requests_through_obstore_write_the_keys_boto3_writes(s3, request):
    store = S3Store(f"s3://ranges/{request.node.name}", s3.client())
    for key in KEYS + BOTO3_ONLY:
        assert store.put(key, key.encode())
        assert not store.put(key, b"twin", if_absent=True)  # a record created once
        data, info = store.get(key)
        assert data == key.encode() and info.size == len(data) and info.etag.startswith('"')
    assert store._obstore is not None  # the requests above went through obstore
    # the keys as S3 has them (SeaweedFS folds boto3's "//")
    assert {o.key for o in store.list()} == {*KEYS, "a/b.json"}
    with pytest.raises(FileNotFoundError):
        store.get("none.json")


@pytest.mark.s3
def test_a_process_forked_after_obstore_ran_uses_boto3(s3, request):
    """obstore's runtime threads do not survive a fork: a child of a process that used it must
    not hang on its first request (it goes through boto3); a parent that forks workers keeps
    obstore out of itself with ``without_obstore``, so that its children can use it."""

    script = f"""
import os, signal, sys
from devtools.services import SeaweedS3
from echocam.bucket import storage
from echocam.bucket.storage import S3Store

signal.alarm(60)  # a hung child fails the test instead of hanging it
def store():
    return S3Store("s3://ranges/{request.node.name}", storage.s3_client(
        endpoint_url="{s3.endpoint_url}", region="us-east-1", retries=2))
with storage.without_obstore():
    store().put("parent-boto3", b"p")
assert storage._obstore_pid is None, "obstore ran inside without_obstore"
pid = os.fork()
if pid == 0:  # the child of a parent that has not used obstore: it may
    s = store(); s.put("child-1", b"c")
    os._exit(0 if storage._obstore_pid == os.getpid() else 3)
assert os.waitpid(pid, 0)[1] == 0
store().put("parent-obstore", b"p")
assert storage._obstore_pid == os.getpid()
pid = os.fork()
if pid == 0:  # the child of a parent that used obstore: boto3, and no hang
    s = store(); s.put("child-2", s.get("parent-obstore")[0])
    os._exit(0 if s._objects() is None else 4)
assert os.waitpid(pid, 0)[1] == 0
print("ok")
"""
    import os
    import subprocess
    import sys

    from devtools.stack import ROOT

    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
           "AWS_SECRET_ACCESS_KEY": s3.secret_key}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    store = S3Store(f"s3://ranges/{request.node.name}", s3.client())
    assert store.get("child-2")[0] == b"p" and store.get("child-1")[0] == b"c"
