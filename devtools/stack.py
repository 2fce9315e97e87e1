"""Real worker processes and the echocam CLI, as subprocesses (tests, demo, benchmarks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent


def _group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies, which only wait to be reaped by
    whoever adopted them, left out); on systems without ``/proc``, the group's existence."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the command name
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


class Worker:
    """``echocam worker`` as a subprocess (its own process group, ended by PID).

    Every worker this process starts is kept in ``Worker.started``, so that whoever started
    them (a test session, the demo) can check that none is left running: see :meth:`alive`.
    """

    started: ClassVar[list[Worker]] = []

    def __init__(self, env: dict[str, str], *, name: str, log_dir: Path, args: list[str] = ()):
        self.env, self.name, self.args = env, name, list(args)
        self.log_path = log_dir / f"worker-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:  # the worker holds its own copy
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
        Worker.started.append(self)
        return self

    @property
    def queue(self) -> str:
        """The Celery queue this worker consumes (its ``ECHOCAM_QUEUE``)."""
        return self.env.get("ECHOCAM_QUEUE", "echocam")

    def alive(self) -> bool:
        """Whether any process of the worker's group is left: its main process, or a pool
        process that outlived it."""
        if self.proc is None:
            return False
        self.proc.poll()  # reap an exited main process
        return bool(_group_members(self.proc.pid))

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
        """End the worker with ``sig`` (SIGKILL after ``timeout`` s), then any pool process
        left in its group (a main process killed first orphans them); returns once the whole
        group is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        deadline = time.monotonic() + 10
        while self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker {self.name}: processes of group {self.proc.pid} live on"
                )
            time.sleep(0.1)


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
