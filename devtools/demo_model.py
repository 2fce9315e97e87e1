"""The demo's species model: `echocam train` on synthetic calls, once, cached by what shapes it.

Three synthetic species and a Background class (:mod:`devtools.synthetic`) are mixed into real
recordings (``samples/``, and ``../shared/data/recordings/`` where present) and a ResNet-18 is
trained on them with the real ``echocam train`` CLI: from the cached ImageNet weights where there
are some, else from random weights.  The model is cached under ``.demo-cache/species-<key>/``,
where the key (:func:`cache_key`) hashes everything that would change it: the recipe, the initial
weights, the background recordings, the code that makes the data and trains, and the versions
of the libraries it runs on.  A change to any of them trains a new model; the old one is
removed.

    model = ensure(env)              # trains (about 2 minutes on 2 cores) unless cached
    model.checkpoint                 # .demo-cache/species-<key>/species.pt, for --weights
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from devtools import synthetic
from devtools.stack import ROOT, echocam

CACHE = ROOT / ".demo-cache"
CHECKPOINT = "species.pt"
SAMPLES = ROOT / "samples"
SHARED = ROOT.parent / "shared" / "data" / "recordings"
#: The code that makes the training data and trains on it (folders: their ``*.py``).
CODE = (
    "devtools/demo_model.py",
    "devtools/synthetic.py",
    "echocam/settings.py",
    "echocam/explain/model.py",
    "echocam/signal",
    "echocam/train",
    "echocam_cli/__init__.py",
)
LIBRARIES = ("torch", "torchvision", "numpy", "soundfile")


@dataclass(frozen=True)
class Recipe:
    """The training set (``synthetic.write_species``'s arguments) and ``echocam train``'s flags.

    tests/trained_species.py's recipe, shortened to about 2 minutes on 2 cores: it stops after
    two perfect validations instead of three (about 5 epochs of 96 windows) and validates on
    10 % of the clips instead of 15 %.
    """

    per_class: int = 72
    seed: int = 1
    duration_s: float = 6.0
    n_calls: int = 3
    snr_db: tuple[float, float] = (-6.0, 6.0)
    # 224: the demo's two minutes (the recipe's unresized input costs ~2.5x a window); two
    # frequency masks, as the tests' model and the demo's screenshots (the default is now none)
    train_flags: str = (
        "--epochs 8 --epoch-windows 96 --batch-size 16 --lr 1e-3 --seed 0 --val-fraction 0.1 "
        "--patience 8 --target-f1 1.0 --target-epochs 2 --input-size 224 --freq-masks 2 --quiet"
    )


@dataclass(frozen=True)
class DemoModel:
    checkpoint: Path
    cached: bool  # found in the cache (False: trained just now)


def recordings() -> list[Path]:
    """The real recordings to mix calls into: samples/ and ../shared's, one of each name."""
    found: dict[str, Path] = {}
    for folder in (SAMPLES, SHARED):
        for p in sorted(folder.glob("*")) if folder.is_dir() else ():
            if p.suffix in (".wav", ".mp3"):
                found.setdefault(p.name, p)
    return [found[n] for n in sorted(found)]


def split_backgrounds(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(training backgrounds, the demo input's backgrounds: those of
    :data:`synthetic.HELD_OUT_RECORDINGS` present, as in the tests).

    Without the held-out recordings (samples/ alone) the input lies over the training
    backgrounds too, a seed apart: other stretches of them, other calls.
    """
    train, held = synthetic.split_recordings(paths)
    return train, held or train


def imagenet_weights() -> Path | None:
    """The cached ImageNet ResNet-18 weights, None where there are none (never downloads)."""
    from echocam.explain.model import imagenet_cache_path

    path = imagenet_cache_path()
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_digests(root: Path = ROOT) -> dict[str, str]:
    """sha256 of each file of :data:`CODE` under ``root``, by path relative to it."""
    out = {}
    for name in CODE:
        p = root / name
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            out[f.relative_to(root).as_posix()] = _sha256(f)
    return out


def key_inputs(
    *, recipe: Recipe, init: str, backgrounds: list[Path], code: dict[str, str]
) -> dict[str, object]:
    """Everything the model depends on, as JSON (``key.json`` beside the model)."""
    return {
        "recipe": asdict(recipe),
        "init": init,
        "backgrounds": {p.name: _sha256(p) for p in backgrounds},
        "code": code,
        "versions": {name: version(name) for name in LIBRARIES},
    }


def cache_key(inputs: dict[str, object]) -> str:
    """16 hex digits of the sha256 of :func:`key_inputs`: the cache folder's name."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def plan(*, recipe: Recipe, cache: Path) -> tuple[Path, str, dict[str, object]]:
    """(the model's folder in ``cache``, ``echocam train``'s ``--init``, the key's inputs)."""
    weights = imagenet_weights()
    inputs = key_inputs(
        recipe=recipe,
        init=f"imagenet:{weights.name}" if weights else "random",
        backgrounds=split_backgrounds(recordings())[0],
        code=code_digests(),
    )
    return cache / f"species-{cache_key(inputs)}", "imagenet" if weights else "random", inputs


def ensure(
    env: dict[str, str],
    *,
    recipe: Recipe = Recipe(),
    cache: Path = CACHE,
    say: Callable[[str], None] = print,
) -> DemoModel:
    """The model of ``recipe`` from ``cache``, trained now if it is not there (``env``: the
    training's environment).  Raises ``CalledProcessError`` if ``echocam train`` fails."""
    folder, init, inputs = plan(recipe=recipe, cache=cache)
    ckpt = folder / CHECKPOINT
    if ckpt.is_file():
        say(f"using the cached demo model at {shown(folder)}/")
        return DemoModel(ckpt, cached=True)
    weights = "the cached ImageNet weights" if init == "imagenet" else "random weights"
    say(f"training a demo species model (about 2 minutes, once; cached at {shown(folder)}/)")
    n = len(inputs["backgrounds"])
    say(f"  from {weights}, on 3 synthetic species + Background mixed into {n} real recordings")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"tmp-{folder.name}-", dir=cache))
    try:
        _train(env, work, recipe=recipe, init=init)
        (work / "key.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
        for stale in cache.glob("species-*"):  # models of another recipe, code or data
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        work.chmod(0o755)
        if not ckpt.is_file():  # else a demo beside this one has just cached the same model
            work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return DemoModel(ckpt, cached=False)


def shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies under it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _train(env: dict[str, str], work: Path, *, recipe: Recipe, init: str) -> None:
    """``work/species.pt`` with metrics.json and confusion.png beside it; the data made for it
    and the resume state are removed."""
    train_bg = split_backgrounds(recordings())[0]
    data = work / "data"
    (data / "background").mkdir(parents=True)
    for p in train_bg:
        shutil.copyfile(p, data / "background" / p.name)
    synthetic.write_species(
        data / "train",
        per_class=recipe.per_class,
        backgrounds=synthetic.backgrounds(train_bg),
        seed=recipe.seed,
        duration_s=recipe.duration_s,
        n_calls=recipe.n_calls,
        snr_db=recipe.snr_db,
    )
    proc = echocam(
        env,
        "train",
        str(data / "train"),
        "--out",
        str(work / CHECKPOINT),
        "--background",
        str(data / "background"),
        "--init",
        init,
        *recipe.train_flags.split(),
        capture=False,
    )
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, "echocam train")
    shutil.rmtree(data)
    (work / "species.resume.pt").unlink(missing_ok=True)
