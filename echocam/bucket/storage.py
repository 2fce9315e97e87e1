"""Where bytes live: a local directory or an S3-compatible bucket, behind one small interface.

No torch here: the producer uses this module too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol
from urllib.parse import urlparse

from echocam.bucket.chunking import read_ahead
from echocam.bucket.keys import join
from echocam.errors import TooLarge
from echocam.settings import Settings

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class ObjectInfo(NamedTuple):
    """One listed object.  A tuple: a listing makes one per object, and a frozen dataclass's
    ``__init__`` cost as much as the rest of the listing's own work per object."""

    key: str  # relative to the store's root
    size: int
    etag: str | None


#: Which listed objects a local listing may read to give them an md5 ETag: ``(key, size)`` →
#: bool.  The others get :func:`unread_etag`: a file above the size cap is never read.
ReadFilter = Callable[[str, int], bool]


class Store(Protocol):
    uri: str

    def list(
        self,
        *,
        suffixes: tuple[str, ...] = (),
        page_size: int = 1000,
        under: str = "",
        read: ReadFilter | None = None,
    ) -> Iterator[ObjectInfo]:
        """Objects under the root (or its folder ``under``, ending in ``/``) whose key ends with
        one of ``suffixes`` (any, if empty); keys stay relative to the root.  ``read`` (None:
        every object) says which a local store hashes for their ETag; S3 lists ETags free."""
        ...

    def keys(self, *, page_size: int = 1000, under: str = "") -> Iterator[str]:
        """The keys :meth:`list` gives, without sizes and ETags (a local store reads no file)."""
        ...

    def get(self, key: str, *, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]: ...

    def stream(self, key: str) -> BinaryIO:
        """The object as a file to read from its start, requested now (FileNotFoundError if
        there is none): for objects too large to hold."""
        ...

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> bool:
        """Write ``data`` (bytes, or a binary file read from its start); with ``if_absent`` only
        if no object is there (False when one was)."""
        ...

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload a (possibly large) local file, streaming it."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """The object's size (and ETag where the store has one) without reading it."""
        ...

    def version(self, key: str) -> str:
        """A token that changes whenever the object does, without reading it: its ETag, or a
        local file's size and modification time (FileNotFoundError if there is none)."""
        ...

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` (exclusive) of the object, clipped to its end.

        ``0 <= start < stop`` and ``start`` below the object's size, else ValueError.
        """
        ...

    def delete(self, keys: list[str]) -> None:
        """Remove these objects (missing ones are no error); S3: 1000 keys per request.  A key
        ending in ``/`` names a folder: removed where the store keeps folders and it is empty."""
        ...


def suffix_matches(key: str, suffixes: tuple[str, ...]) -> bool:
    """Whether ``key`` ends with one of ``suffixes``, case-insensitively (any key, if empty)."""
    return not suffixes or key.lower().endswith(suffixes)


def md5_etag(data: bytes) -> str:
    """The ETag S3 gives a single-part upload of ``data``; local files get the same."""
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


def unread_etag(stat: os.stat_result) -> str:
    """The ETag of a local file that is not read: its size and modification time.  It changes
    when the file is rewritten, so a new version is never skipped as done."""
    return f'"unread-{stat.st_size}-{stat.st_mtime_ns}"'


def file_md5_etag(path: str | os.PathLike) -> str:
    """:func:`md5_etag` of a file's bytes, read in blocks: constant memory for any size."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False))
    return f'"{digest.hexdigest()}"'


class LocalStore:
    """A directory; ``only`` restricts listing to one file (``echocam run FILE``)."""

    def __init__(self, root: str | os.PathLike, *, only: str | None = None):
        self.root = Path(root).resolve()
        self.only = only
        self.uri = str(self.root)
        self._prefix = os.path.join(self.uri, "")

    def _path(self, key: str) -> Path:
        """``key``'s file, links followed: a read never leaves the root."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key {key!r} escapes {self.root}")
        return path

    def _where(self, key: str) -> str:
        """``key``'s path for a write: ``..`` cannot leave the root.  Links the user made in
        their output folder are followed (resolving every component would cost a third of a
        small file's write)."""
        path = os.path.normpath(os.path.join(self.uri, key))
        if not path.startswith(self._prefix):
            raise ValueError(f"key {key!r} escapes {self.root}")
        return path

    def _files(self, under: str) -> Iterator[tuple[Path, str]]:
        if self.only is not None:
            paths = [self.root / self.only] if not under else []
        else:
            top = self._path(under) if under else self.root
            paths = (p for p in sorted(top.rglob("*")) if p.is_file())
        for p in paths:
            yield p, p.relative_to(self.root).as_posix()

    def list(
        self,
        *,
        suffixes: tuple[str, ...] = (),
        page_size: int = 1000,
        under: str = "",
        read: ReadFilter | None = None,
    ) -> Iterator[ObjectInfo]:
        for p, key in self._files(under):
            if suffix_matches(key, suffixes):
                stat = p.stat()
                if read is None or read(key, stat.st_size):
                    # The md5 ETag an S3 single-part upload would get: records match across
                    # stores.
                    yield ObjectInfo(key, stat.st_size, file_md5_etag(p))
                else:
                    yield ObjectInfo(key, stat.st_size, unread_etag(stat))

    def keys(self, *, page_size: int = 1000, under: str = "") -> Iterator[str]:
        return (key for _, key in self._files(under))

    def get(self, key: str, *, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        path = self._path(key)
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise TooLarge(f"object is {size} bytes, above the cap of {max_bytes}")
        data = path.read_bytes()
        return data, ObjectInfo(key, size, md5_etag(data))

    def stream(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> bool:
        # A temporary file renamed (or linked) into place: readers never see part of a file.
        # Its folder is made only when missing, and the kernel applies the umask to the mode:
        # a small file's write costs little more than the file's creation.
        path = self._where(key)
        tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}"
        for attempt in (1, 2, 3):
            try:
                fd = os.open(tmp, _CREATE, 0o666)
                break
            except FileNotFoundError:  # no folder yet (or removed as empty in between)
                if attempt == 3:
                    raise
                os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(fd, "wb", closefd=True) as f:
                if isinstance(data, bytes | bytearray | memoryview):
                    f.write(data)
                else:
                    data.seek(0)
                    shutil.copyfileobj(data, f, 1 << 20)
            if if_absent:
                try:
                    os.link(tmp, path)  # atomic create-if-absent
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, path)
                tmp = ""
            return True
        finally:
            if tmp:
                os.unlink(tmp)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)

    def head(self, key: str) -> ObjectInfo:
        # No ETag: a local file's md5 would mean reading it whole.
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return ObjectInfo(key, path.stat().st_size, None)

    def version(self, key: str) -> str:
        return unread_etag(self._path(key).stat())

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        path = self._path(key)
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            _check_range(start, stop, size)
            f.seek(start)
            return f.read(min(stop, size) - start)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            if key.endswith("/"):
                with contextlib.suppress(OSError):  # not empty, or gone
                    self._path(key).rmdir()
            else:
                self._path(key).unlink(missing_ok=True)


def s3_client(*, endpoint_url: str = "", region: str = "", max_pool: int = 16, retries: int = 8):
    """A boto3 S3 client: credentials from the standard AWS chain (``AWS_*`` variables, ...).

    Transient errors (5xx, throttling, connection resets) are retried by botocore's
    ``standard`` mode: exponential backoff with jitter, ``retries`` attempts in all (the first
    included: botocore's ``max_attempts`` would count the retries alone).
    """
    import boto3
    import botocore.session
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": retries, "mode": "standard"},
        max_pool_connections=max_pool,
        connect_timeout=10,
        read_timeout=60,
        # S3-compatible servers (MinIO, SeaweedFS) differ in support for the newer default
        # checksums; send them only where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    core = botocore.session.get_session()
    # Timestamps (a listing's LastModified, a GET's Last-Modified) stay the server's strings:
    # echocam reads none of them, and botocore's default parser (dateutil) is most of the CPU
    # a ListObjectsV2 page costs.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return boto3.session.Session(botocore_session=core).client(
        "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
    )


#: The process whose obstore runtime exists: its threads do not survive a fork, so a child forked
#: after its parent used obstore sends every request through boto3.
_obstore_pid: int | None = None
_boto3_only = False


@contextlib.contextmanager
def without_obstore() -> Iterator[None]:
    """S3 requests inside go through boto3 alone: for a process about to fork workers (Celery's
    prefork parent loading the model), whose children then keep obstore's speed."""
    global _boto3_only
    before, _boto3_only = _boto3_only, True
    try:
        yield
    finally:
        _boto3_only = before


def obstore_for(client: Any, bucket: str) -> Any:
    """``bucket`` as an ``obstore`` store configured as the boto3 ``client`` is: endpoint,
    region, addressing, credentials (the client's own, refreshed as it refreshes them),
    attempts and timeouts."""
    from obstore.store import S3Store as ObjectStore

    meta, config = client.meta, client.meta.config
    endpoint = meta.endpoint_url
    aws = (urlparse(endpoint).hostname or "").endswith(".amazonaws.com")
    style = (config.s3 or {}).get("addressing_style") or "auto"
    attempts = (config.retries or {}).get("total_max_attempts") or 3
    credentials = client._request_signer._credentials  # botocore gives it no public name
    options: dict[str, Any] = {
        "allow_http": endpoint.startswith("http://"),
        "connect_timeout": timedelta(seconds=config.connect_timeout),
        "timeout": timedelta(seconds=config.read_timeout),
    }
    kw: dict[str, Any] = {
        "region": meta.region_name or "us-east-1",
        "virtual_hosted_style_request": style == "virtual" or (style == "auto" and aws),
    }
    if not aws:
        kw["endpoint"] = endpoint
    if credentials is None:
        kw["skip_signature"] = True
    else:

        def provide() -> dict[str, Any]:
            frozen = credentials.get_frozen_credentials()
            return {
                "access_key_id": frozen.access_key,
                "secret_access_key": frozen.secret_key,
                "token": frozen.token,
                # asked again after 5 minutes; botocore refreshes temporary credentials 10 or
                # more minutes before they expire
                "expires_at": datetime.now(UTC) + timedelta(minutes=5),
            }

        kw["credential_provider"] = provide
    return ObjectStore(
        bucket, client_options=options, retry_config={"max_retries": attempts - 1}, **kw
    )


def client_factory(settings: Settings) -> Callable[[], Any]:
    """A maker of S3 clients configured by ``settings`` (endpoint, region, pool, attempts)."""

    def make():
        return s3_client(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            max_pool=max(16, 2 * settings.io_threads),
            retries=settings.s3_max_attempts,
        )

    return make


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → (bucket, prefix without surrounding slashes)."""
    u = urlparse(uri)
    if u.scheme != "s3" or not u.netloc:
        raise ValueError(f"not an s3://bucket/prefix URI: {uri!r}")
    return u.netloc, u.path.strip("/")


_NOT_FOUND = ("404", "NoSuchKey", "NotFound")


class S3Store:
    """A prefix of a bucket; keys are relative to the prefix."""

    def __init__(self, uri: str, client: Any):
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.client = client
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._obstore = None  # see _objects()
        self._lock = threading.Lock()

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def list(
        self,
        *,
        suffixes: tuple[str, ...] = (),
        page_size: int = 1000,
        under: str = "",
        read: ReadFilter | None = None,
    ) -> Iterator[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=(f"{self.prefix}/" if self.prefix else "") + under,
            PaginationConfig={"PageSize": page_size},
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        # The next page is requested while this one is used (and two listings read together,
        # sources and the done index, overlap their requests).
        for page in read_ahead(pages, batch=1, depth=2):
            for obj in page.get("Contents", ()):
                key = obj["Key"][cut:]
                if suffix_matches(key, suffixes):
                    yield ObjectInfo(key, obj["Size"], obj.get("ETag"))

    def keys(self, *, page_size: int = 1000, under: str = "") -> Iterator[str]:
        return (obj.key for obj in self.list(page_size=page_size, under=under))

    def _get_object(self, key: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _NOT_FOUND:
                raise FileNotFoundError(self._key(key)) from None
            raise

    def get(self, key: str, *, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        objects = self._objects()
        if objects is not None:
            import obstore
            from obstore.exceptions import NotFoundError

            try:
                got = obstore.get(objects, self._key(key))
            except NotFoundError:
                raise FileNotFoundError(self._key(key)) from None
            except ValueError:  # a key obstore's paths cannot hold ("a//b", control characters)
                pass
            else:
                size = got.meta["size"]
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(f"object is {size} bytes, above the cap of {max_bytes}")
                return bytes(got.bytes()), ObjectInfo(key, size, got.meta["e_tag"])
        resp = self._get_object(key)
        size = resp["ContentLength"]
        if max_bytes is not None and size > max_bytes:
            resp["Body"].close()
            raise TooLarge(f"object is {size} bytes, above the cap of {max_bytes}")
        data = resp["Body"].read()
        return data, ObjectInfo(key, size, resp.get("ETag"))

    def stream(self, key: str) -> BinaryIO:
        return self._get_object(key)["Body"]

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> bool:
        objects = self._objects()
        if objects is not None and isinstance(data, bytes | bytearray | memoryview):
            import obstore
            from obstore.exceptions import AlreadyExistsError, PreconditionError

            try:
                obstore.put(objects, self._key(key), data, mode="create" if if_absent else None)
                return True
            except (AlreadyExistsError, PreconditionError):
                if if_absent:
                    return False
                raise
            except ValueError:  # a key obstore's paths cannot hold
                pass
        from botocore.exceptions import ClientError

        kw = {"IfNoneMatch": "*"} if if_absent else {}
        if not isinstance(data, bytes | bytearray | memoryview):
            data.seek(0)  # one PUT streamed from the file (single part: the ETag stays its md5)
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **kw)
        except ClientError as e:
            if if_absent and e.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
            ):
                return False
            raise
        return True

    def _objects(self) -> Any | None:
        """The bucket through obstore, for most requests a run makes per recording (GETs and
        PUTs; obstore deletes one key with a DeleteObjects POST, which not every server has):
        boto3 spends about 1 CPU-ms of Python on each, as much as the rest of a 5-s
        clip's host work; obstore (Rust) a fourth to a seventh of it, with the GIL released
        (``benchmarks/bench_host_profile.py``).  None where it cannot serve: see
        :func:`without_obstore`."""
        global _obstore_pid
        pid = os.getpid()
        if _boto3_only or _obstore_pid not in (None, pid):
            return None
        with self._lock:  # made in this process: any made before a fork was refused above
            if self._obstore is None:
                self._obstore = obstore_for(self.client, self.bucket)
            _obstore_pid = pid
            return self._obstore

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def head(self, key: str) -> ObjectInfo:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _NOT_FOUND:
                raise FileNotFoundError(self._key(key)) from None
            raise
        return ObjectInfo(key, resp["ContentLength"], resp.get("ETag"))

    def version(self, key: str) -> str:
        info = self.head(key)
        return info.etag or f"size-{info.size}"

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        from botocore.exceptions import ClientError

        _check_range(start, stop, None)
        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{stop - 1}"
            )
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in _NOT_FOUND:
                raise FileNotFoundError(self._key(key)) from None
            if code in ("InvalidRange", "416"):
                raise ValueError(f"range {start}-{stop} is past the end of {key!r}") from None
            raise
        return resp["Body"].read()

    def delete(self, keys: list[str]) -> None:
        if len(keys) == 1:  # one request either way; DeleteObject is the one every server has
            self.client.delete_object(Bucket=self.bucket, Key=self._key(keys[0]))
            return
        for i in range(0, len(keys), 1000):
            some = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            resp = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": some, "Quiet": True}
            )
            if resp.get("Errors"):
                e = resp["Errors"][0]
                raise OSError(f"cannot delete {e.get('Key')}: {e.get('Code')} {e.get('Message')}")


def _check_range(start: int, stop: int, size: int | None) -> None:
    if not 0 <= start < stop or (size is not None and start >= size):
        raise ValueError(f"range {start}-{stop} is empty or past the end ({size} bytes)")


def read_json(store: Store, key: str) -> dict | None:
    """The JSON object at ``key``, or None when there is none."""
    try:
        data, _ = store.get(key)
    except FileNotFoundError:
        return None
    return json.loads(data)


def open_store(uri: str, *, client_factory=None) -> Store:
    """A store for a local path (directory or file) or an ``s3://bucket/prefix`` URI."""
    if uri.startswith("s3://"):
        return S3Store(uri, (client_factory or s3_client)())
    path = Path(uri)
    if path.is_file():
        return LocalStore(path.parent, only=path.name)
    return LocalStore(path)
