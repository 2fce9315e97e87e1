import posixpath

import pytest

from echocam.bucket.keys import join, output_dir, output_key
from echocam.errors import UnsafeKey

HOSTILE = [
    "../../etc/passwd.wav",
    "/abs/path.wav",
    "a/./b/../c.wav",
    "a//b.wav",
    "bell\x07\n\r.wav",
    "100%.wav",
    "back\\slash.wav",
    "x" * 3000 + ".wav",
    ("deep/" * 400) + "y.wav",
    "ünïcødé/鳥の声 with spaces.wav",
    "..",
    ".",
]


@pytest.mark.parametrize("key", HOSTILE, ids=range(len(HOSTILE)))
def test_output_keys_never_escape_the_prefix(key):
    out = output_key(key, "record.json")
    full = join("out/prefix", out)
    assert posixpath.normpath(full).startswith("out/prefix/")
    assert not out.startswith("/")
    segs = out.split("/")
    assert "." not in segs and ".." not in segs and "" not in segs
    assert not any(ord(c) < 32 for c in out)
    assert len(out.encode()) <= 1024 - 100
    assert all(len(s.encode()) <= 200 for s in segs)


def test_mapping_is_injective_and_readable():
    keys = ["a/b.wav", "/a/b.wav", "a//b.wav", "a/%2F/b.wav", "a/../b.wav", "a/%2E%2E/b.wav"]
    outs = [output_dir(k) for k in keys]
    assert len(set(outs)) == len(outs)
    assert output_dir("birds/plover/001.wav") == "birds/plover/001.wav"
    assert output_dir("ünïcødé/鳥.wav") == "ünïcødé/鳥.wav"


def test_empty_key_is_rejected():
    with pytest.raises(UnsafeKey):
        output_dir("")
