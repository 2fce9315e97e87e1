"""``echocam view``: the standard library's threading HTTP server over one run.

Routes (the table is :attr:`Handler.ROUTES`, anything else is a 404):

``/``, ``/detections``, ``/failed``, ``/rec?key=SOURCE``,
``/similar?key=SOURCE&t=WINDOW_START&class=NAME`` (more like this detection)
    pages (:mod:`echocam.view.pages`);
``/file/KEY``
    an output under the run (``record.json``, ``cam.npz``, PNGs, tables), checked by
    :func:`echocam.view.data.safe_key`;
``/tile?key=PNG&z=&i=``, ``/tile?rec=SOURCE&image=overlay&z=&i=`` (a tiled image),
``/thumb?key=PNG&cols=``, ``/crop?key=SOURCE&t=&class_id=``
    pieces of the PNGs, cut here (:mod:`echocam.view.images`);
``/audio?key=SOURCE``
    the source recording of a record of this run, streamed from the input store with HTTP
    range requests (206), the server's credentials staying on the server;
``/colourbar/NAME.png``, ``/static/NAME``.

Review mode (``--review NAME``; otherwise each of these answers 403):

``/review`` the review page; ``/review/crop?id=DETECTION`` its spectrogram around a detection;
``GET /api/review/session`` (the page's CSRF token), ``GET /api/review/queue``,
``GET /api/review/verdicts`` (this reviewer's), ``POST /api/review/verdicts``
    (:mod:`echocam.view.review`).  A POST needs ``Content-Type: application/json``, a CSRF token
    this viewer issued in ``X-CSRF-Token``, and an ``Origin`` (when the client sends one) equal
    to the viewer's own; its body is at most :data:`MAX_BODY` bytes.

Security: binds 127.0.0.1 unless told otherwise; on a loopback address requests must name a
loopback Host (no DNS rebinding); with a token every request needs it (``?token=`` once sets an
HttpOnly cookie); a strict Content-Security-Policy; no path reaches outside the run.  No
response carries CORS headers, so another site's page can neither read the CSRF token nor an
answer.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import sys
import threading
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from echocam.errors import InvalidParams, UnsafeKey
from echocam.view import pages
from echocam.view.data import AUDIO_TYPES, IMAGE_SUFFIXES, BadKey, RunData, audio_type, safe_key
from echocam.view.images import Images, Tiled, colour_bar, image_ref

STATIC = {
    "view.css": "text/css; charset=utf-8",
    "view.js": "text/javascript; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
}
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".jsonl": "application/jsonl",
    ".html": "text/html; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
COOKIE = "echocam_token"
_STREAM_CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
MAX_BODY = 1 << 20  # bytes of a POST body


def parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """One ``bytes=`` range of an object of ``size`` bytes → (start, stop exclusive).

    None when the header is not a single byte range (answered with the whole object, as RFC 9110
    allows); ``"unsatisfiable"`` when it lies past the end (416).
    """
    m = _RANGE.match(header.strip())
    if not m or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    stop = size if last == "" else min(size, int(last) + 1)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, stop


class Route(NamedTuple):
    """A row of :attr:`Handler.ROUTES`: ``handler(handler, query, **named groups)`` answers a
    ``method`` request whose path matches ``pattern`` in full."""

    method: str
    pattern: str  # a regular expression
    handler: Callable[..., None]


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address,
        data: RunData,
        *,
        token: str | None = None,
        quiet=False,
        review: str | None = None,
    ):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if review and not loopback and not token:
            raise InvalidParams(f"--review on {host} (not loopback) needs --token")
        super().__init__(address, Handler)
        self.data = data
        self.images = Images(data.get)
        self.token = token or None
        self.quiet = quiet
        self.loopback = loopback
        self.review = None
        if review:
            from echocam.view.review import Review

            self.review = Review(data, reviewer=review)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"
    server_version = "echocam-view"
    sys_version = ""

    # plumbing
    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # never the query: it may hold the token
        path = self._target()[0] if hasattr(self, "path") else "-"
        self.log_message('"%s %s" %s %s', self.command, path, code, size)

    def _headers(self, status: int, ctype: str, length: int, extra: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def send(self, status: int, body: bytes, ctype: str, **extra: str) -> None:
        headers = {"Cache-Control": "no-cache"}
        headers.update({k.replace("_", "-"): v for k, v in extra.items()})
        self._headers(status, ctype, len(body), headers)
        if self.command != "HEAD":
            self.wfile.write(body)

    def fail(self, status: HTTPStatus, message: str = "") -> None:
        text = f"{status.value} {status.phrase}{': ' + message if message else ''}\n"
        self.send(status, text.encode(), "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            if not self._allowed():
                return
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (media elements abort requests all the time)
        except (BadKey, UnsafeKey, FileNotFoundError, KeyError, IndexError):
            self.fail(HTTPStatus.NOT_FOUND)
        except (ValueError, InvalidParams):  # a malformed number or name in the query
            self.fail(HTTPStatus.BAD_REQUEST)
        except Exception:  # details in the server's log, never to the browser
            traceback.print_exc(file=sys.stderr)
            self.fail(HTTPStatus.INTERNAL_SERVER_ERROR)

    def do_POST(self) -> None:
        try:
            if not self._allowed():
                return
            if self.server.review is None:
                self.fail(HTTPStatus.FORBIDDEN, "read-only: start the viewer with --review NAME")
                return
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.fail(HTTPStatus.INTERNAL_SERVER_ERROR)

    def _allowed(self) -> bool:
        if self.server.loopback:
            host = self.headers.get("Host", "")
            name = urlsplit("//" + host).hostname if host else None
            if name not in LOOPBACK_NAMES:
                self.fail(HTTPStatus.FORBIDDEN, "this viewer answers to localhost only")
                return False
        token = self.server.token
        if token is None:
            return True
        path, raw_query = self._target()
        query = dict(parse_qsl(raw_query))
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        given = [
            query.get("token", ""),
            cookie[COOKIE].value if COOKIE in cookie else "",
            self.headers.get("Authorization", "").removeprefix("Bearer "),
        ]
        if not any(g and hmac.compare_digest(g.encode(), token.encode()) for g in given):
            self.fail(HTTPStatus.UNAUTHORIZED, "open the URL with ?token=... once")
            return False
        if "token" in query:  # once: keep it in a cookie and out of the address bar
            rest = urlencode([(k, v) for k, v in parse_qsl(raw_query) if k != "token"])
            self.send_response(HTTPStatus.SEE_OTHER)
            here = "/" + path.lstrip("/")  # never "//host": no open redirect
            self.send_header("Location", here + (f"?{rest}" if rest else ""))
            self.send_header("Set-Cookie", f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        return True

    # routes
    def _target(self) -> tuple[str, str]:
        """(path, query) of the request target, the path still percent-encoded."""
        target = self.path
        if target.startswith(("http://", "https://")):  # absolute-form
            url = urlsplit(target)
            return url.path, url.query
        path, _, query = target.partition("?")
        return path, query.partition("#")[0]

    def _route(self) -> None:
        """Answer with the handler of the first row of ``ROUTES`` that matches; else 404."""
        path, raw_query = self._target()
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        query.pop("token", None)
        method = "GET" if self.command == "HEAD" else self.command  # send() drops HEAD's body
        for route in self.ROUTES:
            match = re.fullmatch(route.pattern, path)
            if match and route.method == method:
                route.handler(self, query, **match.groupdict())
                return
        self.fail(HTTPStatus.NOT_FOUND)

    # handlers: (query, the pattern's named groups)
    def _page(self, body: bytes | None) -> None:
        if body is None:
            self.fail(HTTPStatus.NOT_FOUND, "no record for that key in this run")
        else:
            self.send(200, body, "text/html; charset=utf-8")

    def _gallery(self, query: dict[str, str]) -> None:
        self._page(pages.gallery(self.server.data, query))

    def _detections(self, query: dict[str, str]) -> None:
        self._page(pages.detections(self.server.data, query))

    def _similar(self, query: dict[str, str]) -> None:
        body = pages.similar(self.server.data, query, reviewing=self.server.review is not None)
        if body is None:
            self.fail(HTTPStatus.NOT_FOUND, "no such detection in this run's embeddings")
        else:
            self.send(200, body, "text/html; charset=utf-8")

    def _failed(self, query: dict[str, str]) -> None:
        self._page(pages.failed(self.server.data, query))

    # review mode
    def _reviewing(self):
        """The viewer's Review, or None after answering 403 (read-only viewer)."""
        if self.server.review is None:
            self.fail(HTTPStatus.FORBIDDEN, "read-only: start the viewer with --review NAME")
        return self.server.review

    def send_json(self, status: int, value: Any) -> None:
        self.send(status, json.dumps(value).encode(), "application/json", Cache_Control="no-store")

    def _review_page(self, query: dict[str, str]) -> None:
        if (review := self._reviewing()) is not None:
            self._page(pages.review(self.server.data, review, query))

    def _review_crop(self, query: dict[str, str]) -> None:
        from echocam.search import parse_detection_id
        from echocam.view.review import crop

        if (review := self._reviewing()) is None:
            return
        try:
            rows = review.rows([parse_detection_id(query["id"])])
        except InvalidParams as e:  # not a detection id: no such image
            raise KeyError(query["id"]) from e
        if not rows:
            raise KeyError(query["id"])
        record = self.server.data.record(rows[0]["source_key"])
        if record is None:
            raise KeyError(query["id"])
        body = crop(self.server.images, record, self.server.data.params(), rows[0])
        self.send(200, body, "image/png", Cache_Control="private, max-age=3600")

    def _review_session(self, query: dict[str, str]) -> None:
        from echocam.view.review import STRATEGIES

        if (review := self._reviewing()) is None:
            return
        names = self.server.data.run().get("class_names") or []
        self.send_json(
            200,
            {
                "csrf": review.issue_token(),
                "reviewer": review.reviewer,
                "classes": names,
                "strategies": list(STRATEGIES),
                "thresholds": review.thresholds,
            },
        )

    def _review_queue(self, query: dict[str, str]) -> None:
        if (review := self._reviewing()) is None:
            return
        try:
            self.send_json(200, {"items": review.queue(query)})
        except InvalidParams as e:
            self.send_json(400, {"error": str(e)})

    def _review_mine(self, query: dict[str, str]) -> None:
        if (review := self._reviewing()) is not None:
            self.send_json(200, review.mine(limit=min(int(query.get("n") or 50), 1000)))

    def _review_verdicts(self, query: dict[str, str]) -> None:
        """POST: check where the request comes from, then store the verdicts, then answer."""
        review = self.server.review
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            self.send_json(403, {"error": "cross-origin request"})
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self.send_json(415, {"error": "Content-Type: application/json"})
            return
        if not review.token_ok(self.headers.get("X-CSRF-Token", "")):
            error = "missing or unknown X-CSRF-Token (GET /api/review/session gives one)"
            self.send_json(403, {"error": error})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.send_json(411, {"error": "Content-Length required"})
            return
        if not 0 < length <= MAX_BODY:
            self.send_json(413, {"error": f"a body of 1 to {MAX_BODY} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length))
            ids = review.judge(body)
        except (ValueError, InvalidParams) as e:  # bad JSON or a bad verdict: nothing stored
            self.send_json(400, {"error": str(e)})
            return
        self.send_json(200, {"ids": ids})

    def _recording(self, query: dict[str, str]) -> None:
        self._page(pages.recording(self.server.data, query["key"]))

    def _tile(self, query: dict[str, str]) -> None:
        body = self.server.images.tile(self._image(query), int(query["z"]), int(query["i"]))
        self.send(200, body, "image/png", Cache_Control="private, max-age=3600")

    def _thumb(self, query: dict[str, str]) -> None:
        key = safe_key(query["key"], suffixes=IMAGE_SUFFIXES)
        cols = int(query.get("cols", "3308"))
        body = self.server.images.thumbnail(key, columns=cols)
        self.send(200, body, "image/png", Cache_Control="private, max-age=3600")

    def _colour_bar(self, query: dict[str, str], *, name: str) -> None:
        self.send(200, colour_bar(name), "image/png", Cache_Control="max-age=86400")

    def _static(self, query: dict[str, str], *, name: str) -> None:
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        self.send(200, body, STATIC[name])

    def _file(self, query: dict[str, str], *, key: str) -> None:
        key = unquote(key)
        body = self.server.data.get(safe_key(key))
        ext = "." + key.rsplit(".", 1)[-1].lower()
        ctype = CONTENT_TYPES.get(ext, "application/octet-stream")
        name = key.rsplit("/", 1)[-1].replace('"', "")
        disposition = "inline" if ext in (*IMAGE_SUFFIXES, ".json", ".txt") else "attachment"
        self.send(200, body, ctype, Content_Disposition=f'{disposition}; filename="{_ascii(name)}"')

    def _image(self, query: dict[str, str]) -> str | Tiled:
        """The image a ``/tile`` query names: ``key`` (a PNG), or ``rec`` and ``image`` (the
        tiles that record lists for its "spectrogram" or "overlay")."""
        if "rec" not in query:
            return safe_key(query["key"], suffixes=IMAGE_SUFFIXES)
        record = self.server.data.record(query["rec"])
        if record is None or query.get("image") not in ("spectrogram", "overlay"):
            raise KeyError(query["rec"])
        ref = image_ref(record, query["image"])
        if not isinstance(ref, Tiled):
            raise KeyError(query["rec"])
        for key in ref.keys:
            safe_key(key, suffixes=IMAGE_SUFFIXES)
        return ref

    def _crop(self, query: dict[str, str]) -> None:
        from echocam.view.report import detection_crop

        data = self.server.data
        record = data.record(query["key"])
        if record is None:
            raise KeyError(query["key"])
        body = detection_crop(
            self.server.images, record, data.params(), float(query["t"]), int(query["class_id"])
        )
        if body is None:
            raise KeyError("no such detection")
        self.send(200, body, "image/png", Cache_Control="private, max-age=3600")

    def _audio(self, query: dict[str, str]) -> None:
        """Stream the source of one of this run's records, honouring a byte range."""
        source_key = query["key"]
        ctype = audio_type(source_key)
        if ctype is None:
            raise KeyError(source_key)
        safe_key(source_key, suffixes=tuple(AUDIO_TYPES))  # a plain relative key
        if self.server.data.record(source_key) is None:  # only recordings of this run
            raise KeyError(source_key)
        store = self.server.data.input_store()
        try:
            size = store.head(source_key).size
        except ValueError as e:  # a local key that resolves outside the input directory
            raise BadKey(source_key) from e
        header = self.headers.get("Range")
        span = parse_range(header, size) if header else None
        common = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0"}
        if span == "unsatisfiable":
            self._headers(416, "text/plain", 0, {**common, "Content-Range": f"bytes */{size}"})
            return
        if span is None:
            start, stop, status = 0, size, 200
        else:
            start, stop = span
            status = 206
            common["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        self._headers(status, ctype, stop - start, common)
        if self.command == "HEAD":
            return
        for at in range(start, stop, _STREAM_CHUNK):
            self.wfile.write(store.get_range(source_key, at, min(stop, at + _STREAM_CHUNK)))

    # Method and path (a full match of the still percent-encoded path) → handler; the first row
    # that matches answers, and a request that matches none is a 404. HEAD is answered as GET.
    ROUTES = (
        Route("GET", r"/", _gallery),
        Route("GET", r"/detections", _detections),
        Route("GET", r"/failed", _failed),
        Route("GET", r"/rec", _recording),
        Route("GET", r"/file/(?P<key>.+)", _file),
        Route("GET", r"/tile", _tile),
        Route("GET", r"/thumb", _thumb),
        Route("GET", r"/crop", _crop),
        Route("GET", r"/similar", _similar),
        Route("GET", r"/audio", _audio),
        Route("GET", r"/review", _review_page),
        Route("GET", r"/review/crop", _review_crop),
        Route("GET", r"/api/review/session", _review_session),
        Route("GET", r"/api/review/queue", _review_queue),
        Route("GET", r"/api/review/verdicts", _review_mine),
        Route("POST", r"/api/review/verdicts", _review_verdicts),
        Route("GET", r"/colourbar/(?P<name>magma|plasma)\.png", _colour_bar),
        Route("GET", r"/static/(?P<name>" + "|".join(map(re.escape, STATIC)) + ")", _static),
    )


def _ascii(name: str) -> str:
    return name.encode("ascii", "replace").decode().replace("?", "_")


def make_server(
    uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    client_factory=None,
    quiet: bool = False,
    review: str | None = None,
    **minimums: Any,
) -> ViewServer:
    """A viewer of the run at ``uri``; ``minimums``: ``min_probability`` and
    ``class_min_probability``, the detections it shows (:class:`RunData`)."""
    data = RunData.open(uri, client_factory=client_factory, **minimums)
    return ViewServer((host, port), data, token=token, quiet=quiet, review=review)


def serve(uri: str, **kwargs: Any) -> None:
    """Serve the run at ``uri`` until interrupted."""
    server = make_server(uri, **kwargs)
    url = server.url + ("review" if server.review else "")
    url += f"?token={kwargs['token']}" if kwargs.get("token") else ""
    print(f"echocam view: serving {server.data.store.uri} at {url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.data.close()


def start_in_thread(server: ViewServer) -> threading.Thread:
    """Serve in a daemon thread (tests, notebooks); ``server.shutdown()`` stops it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
