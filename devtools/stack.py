"""Real worker processes and the echocam CLI, as subprocesses (tests, demo, benchmarks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """``echocam worker`` as a subprocess (its own process group, ended by PID)."""

    def __init__(self, env: dict[str, str], *, name: str, log_dir: Path, args: list[str] = ()):
        self.env, self.name, self.args = env, name, list(args)
        self.log_path = log_dir / f"worker-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "echocam_cli",
                "worker",
                "--hostname",
                f"{self.name}@%h",
                "--loglevel",
                "INFO",
                *self.args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        return self

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log_tail()}")
            log = self.log_path.read_bytes()
            # Both halves: a pool process warmed up, and the main process consuming (its
            # broadcast queue subscribed: a ping sent before that is never seen).
            if b"process ready" in log and re.search(rb"MainProcess\] \S+ ready\.", log):
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker {self.name} not ready:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def echocam(
    env: dict[str, str], *args: str, timeout: float = 900, capture: bool = True
) -> subprocess.CompletedProcess:
    """Run the ``echocam`` CLI with ``env``; output captured as text unless ``capture=False``."""
    return subprocess.run(
        [sys.executable, "-m", "echocam_cli", *args],
        env=env,
        capture_output=capture,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
