"""`make demo` and `make demo-local`: the product on one machine, offline, without Docker.

The model is the demo's species model (:mod:`devtools.demo_model`: three synthetic species and
Background, trained once and cached) unless ``ECHOCAM_WEIGHTS`` names other weights.  The input
is the recordings in ``samples/`` and synthetic clips of the model's species made for the demo
(another seed than the training's, over held-out recordings where there are some).

``make demo`` runs the distributed path: starts Redis and an S3 server (SeaweedFS), uploads the
input to a bucket, starts one ``echocam worker``, runs ``echocam produce --wait``, writes
``report.html`` into the run (``echocam report``) and copies the run out of the bucket to
``demo-out/distributed/``.  ``make demo-local`` (``--local``) runs ``echocam run`` on the same
input into ``demo-out/local/``.  Both end with the ``echocam view`` command that serves the run.
Everything started here is stopped by PID, also on Ctrl-C, SIGTERM or failure.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from devtools import demo_model, synthetic
from devtools.demo_model import shown
from devtools.stack import ROOT, echocam

BUCKET = "echocam-demo"
WORK = ROOT / ".demo"  # the input, the worker's log; made anew by every demo
OUT = ROOT / "demo-out"
VIEW_PORT = 8765  # echocam view's default


def say(message: str) -> None:
    print(f"echocam demo: {message}", flush=True)


def echocam_command() -> str:
    """How to call this environment's ``echocam`` from here: the bare name where PATH finds it."""
    beside = Path(sys.executable).parent / "echocam"
    if not beside.is_file() or shutil.which("echocam") == str(beside):
        return "echocam"
    return shown(beside)


def weights() -> str:
    """``ECHOCAM_WEIGHTS`` where the user set it, else the demo model (trained now if needed)."""
    chosen = os.environ.get("ECHOCAM_WEIGHTS")
    if chosen:
        say(f"weights {chosen!r} from ECHOCAM_WEIGHTS (unset it for the demo's species model)")
        return chosen
    # The cache key does not cover ECHOCAM_* settings (analysis parameters among them): the
    # model is trained without any.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOCAM_")}
    return str(demo_model.ensure(env, say=say).checkpoint)


def write_clips(
    root: Path, *, per_class: int = 4, seed: int = 1001, snr_db: tuple[float, float] = (3.0, 9.0)
) -> list[Path]:
    """Clips of the demo model's species and Background: 5 s (one analysis window), two calls
    each, a seed the training never used, louder than most training calls so a person sees them.
    Named ``<species>-<i>.wav`` after what they hold; ``calls.csv`` has every call's box."""
    held = demo_model.split_backgrounds(demo_model.recordings())[1]
    made = root / "by-class"
    clips = synthetic.write_species(
        made,
        per_class=per_class,
        backgrounds=synthetic.backgrounds(held),
        seed=seed,
        duration_s=5.0,
        n_calls=2,
        snr_db=snr_db,
        prefix="clip",
    )
    for clip in clips:
        species, _, name = clip.name.partition("/")
        flat = f"{species.split()[-1]}-{name.removeprefix('clip-')}"
        (made / clip.name).rename(root / flat)
        clip.name = flat
    shutil.rmtree(made)
    synthetic.write_calls_csv(root / "calls.csv", clips)
    return sorted(root / c.name for c in clips)


def make_input(root: Path) -> None:
    """``root/samples/``: the shipped recordings; ``root/synthetic/``: :func:`write_clips`."""
    (root / "samples").mkdir(parents=True)
    samples = sorted((ROOT / "samples").glob("*.wav"))
    for p in samples:
        shutil.copyfile(p, root / "samples" / p.name)
    clips = write_clips(root / "synthetic")
    say(
        f"input: {len(samples)} recordings from samples/ and {len(clips)} synthetic clips of the "
        f"model's species ({shown(root)})"
    )


def run_local(model: str, input_dir: Path, out: Path) -> int:
    env = {**os.environ, "ECHOCAM_WEIGHTS": model}
    shutil.rmtree(out, ignore_errors=True)
    say(f"echocam run {shown(input_dir)} --out {shown(out)}")
    proc = echocam(env, "run", str(input_dir), "--out", str(out))
    if proc.returncode != 0:
        say(f"echocam run failed:\n{proc.stdout}{proc.stderr}")
        return proc.returncode
    return report(env, str(out))


def run_distributed(model: str, input_dir: Path, out: Path) -> int:
    from devtools.services import RedisServer, SeaweedS3
    from devtools.stack import Worker

    with RedisServer() as redis_srv, SeaweedS3() as s3:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        for path in sorted(input_dir.rglob("*.wav")):
            key = f"recordings/{path.relative_to(input_dir).as_posix()}"
            client.upload_file(str(path), BUCKET, key)
        env = {**os.environ, **s3.env(), "ECHOCAM_BROKER_URL": redis_srv.url}
        env["ECHOCAM_WEIGHTS"] = model
        say(f"Redis at {redis_srv.url}, S3 at {s3.endpoint_url} (SeaweedFS), bucket {BUCKET}")
        worker = Worker(env, name="demo", log_dir=WORK).start()
        try:
            try:
                worker.wait_ready()
            except (RuntimeError, TimeoutError) as e:
                say(f"the worker did not start:\n{e}")
                return 1
            say(f"worker ready (pid {worker.proc.pid}, log {shown(worker.log_path)})")
            src, dest = f"s3://{BUCKET}/recordings", f"s3://{BUCKET}/cams"
            say(f"echocam produce {src} --out {dest} --wait")
            proc = echocam(env, "produce", src, "--out", dest, "--wait", "--timeout", "900")
            if proc.returncode != 0:
                say(f"produce failed:\n{proc.stdout}{proc.stderr}\nthe worker's log ends:")
                print(worker.log_tail(), flush=True)
                return proc.returncode
        finally:
            worker.stop()
        rc = report(env, dest)
        if rc:
            return rc
        shutil.rmtree(out, ignore_errors=True)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="cams/")
        for page in pages:
            for obj in page.get("Contents", ()):
                target = out / obj["Key"][len("cams/") :]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(BUCKET, obj["Key"], str(target))
        say(f"copied the run out of the bucket to {shown(out)} (the S3 server stops now)")
    return 0


def report(env: dict[str, str], dest: str) -> int:
    proc = echocam(env, "report", dest)
    if proc.returncode != 0:
        say(f"echocam report failed:\n{proc.stderr}")
    return proc.returncode


def summary_line(out: Path) -> str:
    """The run in one line: recordings by status, windows, time, recordings by top class."""
    s = json.loads((out / "summary.json").read_text())
    tops = collections.Counter(
        json.loads(line).get("top_class_name")
        for line in (out / "manifest.jsonl").read_text().splitlines()
        if line.strip()
    )
    statuses = ", ".join(f"{n} {k}" for k, n in sorted(s["by_status"].items()))
    classes = ", ".join(f"{name} {n}" for name, n in sorted(tops.items()) if name)
    return (
        f"{s['recordings']} recordings ({statuses}), {s['windows']} windows in "
        f"{s['wall_s']:.0f} s; top class: {classes}"
    )


def look_at(out: Path) -> None:
    print(
        f"\nlook at:\n"
        f"  {echocam_command()} view {shown(out)}\n"
        f"      then open http://127.0.0.1:{VIEW_PORT}/ : the gallery, and each recording's\n"
        f"      spectrogram with its CAMs, evidence boxes and sound (Ctrl-C stops it)\n"
        f"  {shown(out / 'report.html')}\n"
        f"      a static report (counts, classes, top detections) that opens in any browser\n"
        f"  synthetic/<species>-<i>.wav hold two calls of that species (Background: none);\n"
        f"  samples/ are real recordings, without the model's species.",
        flush=True,
    )


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    parser.add_argument("--local", action="store_true", help="local mode (echocam run)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every `with` and `finally` stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    out = OUT / ("local" if args.local else "distributed")
    try:
        model = weights()
        shutil.rmtree(WORK, ignore_errors=True)
        make_input(WORK / "input")
        rc = (run_local if args.local else run_distributed)(model, WORK / "input", out)
    except KeyboardInterrupt:
        say("interrupted; everything the demo started is stopped")
        return 130
    except subprocess.CalledProcessError as e:
        if e.returncode == 130:  # it saw the Ctrl-C first
            say("interrupted; everything the demo started is stopped")
            return 130
        say(f"{e.cmd} failed (exit status {e.returncode})")
        return 1
    if rc == 0:
        say(summary_line(out))
        look_at(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
