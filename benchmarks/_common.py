"""Shared by the benchmarks: the machine line, timing, real recordings, tables, JSON output.

Every number a benchmark reports is a ratio or a rate measured in the same process on the same
machine: this machine is shared, so absolute seconds move from run to run while ratios hold.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# the figures and verdicts as the docs print them; ``verdict`` is the benchmarks' too
from performance_page import fmt
from performance_page import verdict as verdict

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # devtools/ is not installed; the tests reach it the same way
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
# ECHOCAM_RECORDINGS: another folder of recordings (a copy carried to a GPU machine, say).
RECORDINGS = Path(
    os.environ.get("ECHOCAM_RECORDINGS") or ROOT.parent / "shared" / "data" / "recordings"
)
SAMPLES = ROOT / "samples"
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    """The first CUDA device's name, or "none"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def machine(threads: int | None = None) -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"threads {m['torch_threads']}, python {m['python']}, load {m['loadavg_1m']}"
    )


def timeit(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Seconds per call of ``fn``: median and best of ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summary(times)


def summary(times: Sequence[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "best_s": min(times),
        "runs": len(times),
        "all_s": [round(t, 5) for t in times],
    }


def recordings(directory: Path | None = None) -> list[Path]:
    """The shared real recordings (``$ECHOCAM_RECORDINGS`` or ``../shared/data/recordings``),
    else the shipped samples."""
    d = directory or (RECORDINGS if RECORDINGS.is_dir() else SAMPLES)
    found = sorted(p for p in d.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not found:
        raise SystemExit(f"no recordings under {d}")
    return found


def window_counts(paths: Sequence[Path], params) -> dict[Path, int]:
    """Windows per recording under ``params`` (decoded once, as the pipeline would)."""
    from echocam.signal import audio, windows

    out = {}
    window = params.window_samples
    hop = params.hop_samples
    for p in paths:
        a = audio.decode(p.read_bytes(), **params.decode_options())
        n = a.samples.shape[0]
        out[p] = len(windows.window_starts(n, window=min(window, n), hop=hop))
    return out


def pick_recordings(counts: dict[Path, int], target: int) -> list[Path]:
    """Recordings (repeats allowed) whose windows add up to exactly ``target``.

    A subset sum over the recordings taken round-robin, preferring earlier entries: every
    recording appears once before any repeats, so every decoder path (22 kHz WAV, 44.1 kHz
    WAV, 48 kHz MP3) is in the mix while the batches stay full.
    """
    rounds = 2 + target // max(1, sum(counts.values()))  # enough repeats to reach the target
    items = [p for _ in range(rounds) for p in counts]
    reach: dict[int, list[Path]] = {0: []}
    for p in items:
        w = counts[p]
        for s in sorted(reach, reverse=True):
            if s + w <= target and s + w not in reach:
                reach[s + w] = reach[s] + [p]
        if target in reach:
            return reach[target]
    best = max(reach)
    print(f"note: no mix of recordings gives {target} windows; using {best}", file=sys.stderr)
    return reach[best]


def real_waves(n: int, params, paths: Sequence[Path] | None = None):
    """``n`` real 5-s windows (n, samples) float32, taken in order from the recordings."""
    import numpy as np

    from echocam.signal import audio, windows

    window = params.window_samples
    out = []
    for p in (paths or recordings()) * (n + 1):
        a = audio.decode(p.read_bytes(), **params.decode_options())
        if a.samples.shape[0] < window:
            continue
        starts = windows.window_starts(a.samples.shape[0], window=window, hop=window)
        out.extend(windows.frame(a.samples, starts, window))
        if len(out) >= n:
            break
    return np.stack(out[:n]).astype(np.float32)


def wav_bytes(samples, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table: right-aligned numbers, left-aligned text."""
    cells = [[fmt(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        parts = []
        for i, c in enumerate(row):
            numeric = n > 0 and _is_number(rows[n - 1][i])
            parts.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def commit() -> str:
    """The checkout's HEAD, with "+dirty" when tracked files differ from it."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "HEAD") or "not recorded (no git checkout)"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def now() -> str:
    """The current time, ISO 8601 with its UTC offset, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def benchmark_name() -> str:
    """The running script's benchmark: ``bench_host.py`` -> ``host``."""
    return Path(sys.argv[0]).stem.removeprefix("bench_")


def write_json(path: str | os.PathLike | None, data: dict[str, Any]) -> None:
    """Write ``data`` with what every result carries at its top: ``benchmark``, ``machine``
    (CPU, cores, GPU, torch, Python), ``date`` and ``commit``; values in ``data`` win."""
    if not path:
        return
    meta = {
        "benchmark": data.get("benchmark") or benchmark_name(),
        "date": data.get("date") or now(),
        "commit": data.get("commit") or commit(),
        "machine": {**machine(), **(data.get("machine") or {})},
    }
    data = {**meta, **{k: v for k, v in data.items() if k not in meta}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class LocalMode:
    """Local mode's pipeline over copies of ``paths`` in a scratch folder, with a warm explainer.

    ``run()`` is what ``echocam run`` does after loading the model: ``run_chunks`` over chunks of
    ``chunk_size`` recordings from a ``LocalStore`` to a fresh ``LocalStore`` (outputs and records
    written to disk), minus the manifest.  Repeated paths become distinct recordings.
    """

    def __init__(self, explainer, paths: Sequence[Path], *, chunk_size: int, pool):
        from echocam.bucket.storage import LocalStore
        from echocam.settings import Settings

        self.explainer, self.chunk_size, self.pool = explainer, chunk_size, pool
        self.dst = None  # or a maker of each run's destination store (else a scratch folder)
        self.work = Path(tempfile.mkdtemp(prefix="echocam-bench-"))
        (self.work / "in").mkdir()
        for i, p in enumerate(paths):
            shutil.copyfile(p, self.work / "in" / f"{i:04d}_{p.name}")
        self.src = LocalStore(self.work / "in")
        self.items = list(self.src.list(suffixes=Settings().extensions, page_size=1000))

    def run(self) -> list:
        """Outcomes, one per recording; raises unless every recording is ok."""
        from echocam.bucket.chunking import chunked
        from echocam.bucket.storage import LocalStore
        from echocam.run.runner import run_chunks

        out = self.work / "out"
        shutil.rmtree(out, ignore_errors=True)
        outcomes = run_chunks(
            chunked(self.items, self.chunk_size),
            src=self.src,
            dst=self.dst() if self.dst else LocalStore(out),
            explainer=self.explainer,
            run_id="bench",
            pool=self.pool,
        )
        bad = [o for o in outcomes if o.status != "ok"]
        if bad:
            raise RuntimeError(f"{len(bad)} recordings failed, e.g. {bad[0]}")
        return outcomes

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
