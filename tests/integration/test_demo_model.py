"""The demo model's cache: a change to anything that shapes the model means a new key, and a
model is reused only under its own key (no training here: `make demo` trains)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from devtools import demo_model
from devtools.demo_model import CODE, Recipe, cache_key, code_digests, key_inputs


def _key(tmp_path: Path, **changes) -> str:
    """The key of the default inputs, some of them changed."""
    bg = tmp_path / "bg.wav"
    if not bg.exists():
        bg.write_bytes(b"RIFF background")
    kw = {"recipe": Recipe(), "init": "random", "backgrounds": [bg], "code": {"a.py": "0"}}
    return cache_key(key_inputs(**{**kw, **changes}))


def test_the_same_inputs_give_the_same_key(tmp_path):
    assert _key(tmp_path) == _key(tmp_path)
    assert len(_key(tmp_path)) == 16


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Recipe)])
def test_a_changed_recipe_parameter_means_a_new_key(tmp_path, field):
    value = getattr(Recipe(), field)
    if isinstance(value, str):
        other = value.replace("--epochs 8", "--epochs 9")
    elif isinstance(value, tuple):
        other = (value[0] - 1, value[1])
    else:
        other = value + 1
    assert other != value
    changed = dataclasses.replace(Recipe(), **{field: other})
    assert _key(tmp_path, recipe=changed) != _key(tmp_path)


def test_changed_weights_backgrounds_code_or_libraries_mean_a_new_key(tmp_path, monkeypatch):
    base = _key(tmp_path)
    assert _key(tmp_path, init="imagenet:resnet18-f37072fd.pth") != base
    other = tmp_path / "other.wav"
    other.write_bytes(b"RIFF another background")
    assert _key(tmp_path, backgrounds=[tmp_path / "bg.wav", other]) != base
    (tmp_path / "bg.wav").write_bytes(b"RIFF the same name, other samples")
    changed_bg = _key(tmp_path)
    assert changed_bg != base
    assert _key(tmp_path, code={"a.py": "1"}) != changed_bg
    monkeypatch.setattr(demo_model, "version", lambda name: "0.0-other")
    assert _key(tmp_path) != changed_bg


def test_the_code_digests_cover_the_data_and_the_training_and_see_an_edit(tmp_path):
    digests = code_digests()
    for path in (
        "devtools/synthetic.py",
        "devtools/demo_model.py",
        "echocam/train/loop.py",
        "echocam/signal/frontend.py",
        "echocam/settings.py",
    ):
        assert path in digests
    for name in CODE:  # a copy of the code, one file of it edited
        src = demo_model.ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp_path / name)
    assert code_digests(tmp_path) == digests
    loop = tmp_path / "echocam/train/loop.py"
    loop.write_text(loop.read_text() + "\n# a change\n")
    edited = code_digests(tmp_path)
    assert edited != digests
    assert {k for k in digests if edited[k] != digests[k]} == {"echocam/train/loop.py"}


def test_cached_imagenet_weights_start_the_training_and_change_the_key(tmp_path, monkeypatch):
    from echocam.explain.model import imagenet_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder, init, _ = demo_model.plan(recipe=Recipe(), cache=tmp_path)
    assert init == "random"
    imagenet_cache_path().parent.mkdir(parents=True)
    imagenet_cache_path().write_bytes(b"weights")
    folder_imagenet, init, _ = demo_model.plan(recipe=Recipe(), cache=tmp_path)
    assert init == "imagenet" and folder_imagenet != folder


def test_a_model_is_reused_under_its_own_key_only(tmp_path, monkeypatch):
    trained: list[Recipe] = []

    def fake_train(env, work, *, recipe, init):
        trained.append(recipe)
        (work / demo_model.CHECKPOINT).write_bytes(b"a model")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ImageNet weights
    monkeypatch.setattr(demo_model, "_train", fake_train)
    cache = tmp_path / "cache"
    (cache / "species-0123456789abcdef").mkdir(parents=True)  # a stale model
    (cache / "species-0123456789abcdef" / demo_model.CHECKPOINT).write_bytes(b"stale")
    said: list[str] = []

    first = demo_model.ensure({}, cache=cache, say=said.append)
    assert not first.cached and len(trained) == 1
    assert said[0].startswith("training a demo species model (about 2 minutes, once; cached at")
    assert first.checkpoint.read_bytes() == b"a model"
    assert (first.checkpoint.parent / "key.json").is_file()
    assert [p.name for p in cache.iterdir()] == [first.checkpoint.parent.name]  # stale: gone

    said.clear()
    again = demo_model.ensure({}, cache=cache, say=said.append)
    assert again == dataclasses.replace(first, cached=True) and len(trained) == 1
    assert said == [f"using the cached demo model at {first.checkpoint.parent}/"]

    other = dataclasses.replace(Recipe(), seed=2)
    changed = demo_model.ensure({}, recipe=other, cache=cache, say=said.append)
    assert not changed.cached and trained[-1] == other
    assert changed.checkpoint.parent != first.checkpoint.parent
    assert [p.name for p in cache.iterdir()] == [changed.checkpoint.parent.name]
