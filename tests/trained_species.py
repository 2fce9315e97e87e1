"""Session fixtures: synthetic species over the real recordings, and one model trained on them.

One training per test session (``echocam train --init random``, SIGTERMed after its first epoch
and ``--resume``d), shared by every test that needs a species model: import the fixtures into
a conftest (``tests/conftest.py`` does).  Held-out clips are new clips over real recordings the
training never heard.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools import synthetic
from devtools.stack import ROOT
from tests.helpers import marks

SPECIES = list(synthetic.SPECIES)
CLASSES = sorted([*SPECIES, synthetic.NOISE_CLASS])  # and a class of clips without calls
TRAIN_PER_CLASS, HELDOUT_PER_CLASS = 72, 10
EPOCHS = 10
# 96 windows an epoch from 288 clips, 15 % of the recordings validate; stop once validation is
# perfect three times.  With 36 clips per class the kept model's held-out macro-F1 moved between
# 0.89 and 0.95 with a 1e-7 change in one background's decoding (the 0.9 floor failed a CI run),
# and stopping later kept the same model (the lowest validation loss); more clips, not more
# windows, is what generalises: 0.95 here, 1.00 on 80 held-out clips for two other seeds
# (docs/guides/training.md)
# At 224, the notebook's input, and the background mixing and frequency masks these figures were
# measured with (50 % of windows at 0-20 dB, two masks; the defaults are now heavier mixing and
# none): these tests are about the CLI,
# checkpoints, runs, workers and the review loop, whose first model must make mistakes to fix
# (tests/integration/test_families.py trains at the recipe's own defaults).
TRAIN_ARGS = (
    f"--init random --epochs {EPOCHS} --epoch-windows 96 --batch-size 16 --lr 1e-3 --seed 0 "
    "--input-size 224 --background-p 0.5 --snr-db 0,20 --freq-masks 2 "
    f"--threads 2 --val-fraction 0.15 --patience {EPOCHS} --target-f1 1.0 --target-epochs 3 "
    "--quiet"
).split()


def split_backgrounds() -> tuple[list[Path], list[Path]]:
    """(training backgrounds, held-out backgrounds): different real recordings."""
    from tests.helpers import recordings

    return synthetic.split_recordings(recordings())


@pytest.fixture(scope="session")
def species_data(tmp_path_factory) -> dict:
    """Training folders (6-s clips, three calls each, plus one broken file), unlabelled
    background recordings to mix in, and held-out 5-s clips over other recordings."""
    root = tmp_path_factory.mktemp("species")
    train_paths, held_paths = split_backgrounds()
    (root / "bg").mkdir()
    for p in train_paths:
        (root / "bg" / p.name).write_bytes(p.read_bytes())
    train_bg, held_bg = synthetic.backgrounds(train_paths), synthetic.backgrounds(held_paths)
    synthetic.write_species(
        root / "train",
        per_class=TRAIN_PER_CLASS,
        backgrounds=train_bg,
        seed=1,
        duration_s=6.0,
        n_calls=3,
        snr_db=(-6.0, 6.0),
    )
    (root / "train" / SPECIES[0] / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    held = synthetic.write_species(
        root / "heldout",
        per_class=HELDOUT_PER_CLASS,
        backgrounds=held_bg,
        seed=2,
        duration_s=5.0,
        n_calls=2,
        snr_db=(-6.0, 6.0),
        prefix="held",
    )
    return {
        "train": root / "train",
        "bg": root / "bg",
        "heldout": root / "heldout",
        "held_clips": held,
        "train_backgrounds": train_bg,
        "held_backgrounds": held_bg,
    }


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")
        assert time.monotonic() < deadline, path.read_text(errors="replace")
        time.sleep(0.5)


@pytest.fixture(scope="session")
@marks("training", "slow")
def trained_species(species_data, tmp_path_factory) -> dict:
    """`echocam train` from random weights, SIGTERMed after epoch 1, then `--resume`d."""
    out = tmp_path_factory.mktemp("model")
    ckpt = out / "species.pt"
    log = out / "train.log"
    cmd = [
        sys.executable,
        "-m",
        "echocam_cli",
        "train",
        str(species_data["train"]),
        "--out",
        str(ckpt),
        "--background",
        str(species_data["bg"]),
        *TRAIN_ARGS,
    ]
    t0 = time.monotonic()
    cpu0 = os.times()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            _wait_for(log, f"epoch 1/{EPOCHS}:", proc, timeout=900)
            proc.send_signal(signal.SIGTERM)
            interrupted_rc = proc.wait(300)
        finally:
            if proc.poll() is None:
                proc.kill()
    interrupted = json.loads((out / "metrics.json").read_text())
    with log.open("a") as f:
        resumed = subprocess.run(
            [*cmd, "--resume"], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=1800
        )
    cpu1 = os.times()
    assert resumed.returncode == 0, log.read_text()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    print(f"\ntraining: {time.monotonic() - t0:.0f} s wall, {cpu:.0f} CPU-s", file=sys.stderr)
    return {
        "ckpt": ckpt,
        "dir": out,
        "log": log.read_text(),
        "interrupted_rc": interrupted_rc,
        "interrupted": interrupted,
        "cpu_s": cpu,
    }
