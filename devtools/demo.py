"""`make demo`: the real distributed path on one machine, without Docker.

Starts Redis and an S3 server (SeaweedFS), uploads the sample recordings to a bucket, starts a
worker, runs the producer with --wait (until a worker has written the manifest), copies the
outputs to ./demo-out/, prints where they are, and stops everything it started.
"""

from __future__ import annotations

import os
import shutil
import sys

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import ROOT, Worker, echocam

BUCKET = "echocam-demo"


def main() -> int:
    samples = ROOT / "samples"
    out_dir = ROOT / "demo-out" / "distributed"
    work = ROOT / ".demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    weights = os.environ.get("ECHOCAM_WEIGHTS", "imagenet")
    print(f"echocam demo: weights {weights!r} (set ECHOCAM_WEIGHTS to change)", flush=True)
    with RedisServer() as redis_srv, SeaweedS3() as s3:
        print(f"  redis  {redis_srv.url}\n  s3     {s3.endpoint_url} (SeaweedFS)", flush=True)
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        for path in sorted(samples.glob("*.wav")):
            client.upload_file(str(path), BUCKET, f"recordings/{path.name}")
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_WEIGHTS": weights,
        }
        worker = Worker(env, name="demo", log_dir=work).start()
        try:
            try:
                worker.wait_ready()
            except (RuntimeError, TimeoutError) as e:
                print(f"echocam demo: the worker did not start:\n{e}", file=sys.stderr)
                print(
                    "(offline without ImageNet weights? run `ECHOCAM_WEIGHTS=random make demo` "
                    "or point ECHOCAM_WEIGHTS at a checkpoint)",
                    file=sys.stderr,
                )
                return 1
            print(f"  worker pid {worker.proc.pid}, log {worker.log_path}", flush=True)
            proc = echocam(
                env,
                "produce",
                f"s3://{BUCKET}/recordings",
                "--out",
                f"s3://{BUCKET}/cams",
                "--wait",
                "--timeout",
                "900",
                capture=False,
            )
            if proc.returncode != 0:
                print(f"echocam demo: produce failed\n{worker.log_tail()}", file=sys.stderr)
                return proc.returncode
        finally:
            worker.stop()
        shutil.rmtree(out_dir, ignore_errors=True)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="cams/")
        for page in pages:
            for obj in page.get("Contents", ()):
                dest = out_dir / obj["Key"][len("cams/") :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(BUCKET, obj["Key"], str(dest))
    print(f"\noutputs (copied from s3://{BUCKET}/cams): {out_dir}")
    for overlay in sorted(out_dir.glob("*/overlay.png")):
        print(f"  open {overlay.relative_to(ROOT)}")
    print(f"  manifest {(out_dir / 'manifest.jsonl').relative_to(ROOT)}, summary.json beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
