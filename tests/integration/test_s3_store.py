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
