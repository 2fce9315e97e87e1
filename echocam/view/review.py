"""Review mode of ``echocam view``: the queue of detections to judge, and verdicts coming in.

The queue reads the run's detections table (DuckDB), chooses by class and probability range,
orders by a strategy and leaves out what this reviewer has judged.  Verdicts arrive as JSON,
are checked against the table (the probability and boxes stored with a verdict are the table's,
what the page showed) and become one ``_reviews/`` object per request
(:mod:`echocam.bucket.reviews`) before the request is answered.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

from echocam.bucket import reviews
from echocam.bucket.detections import detection_id
from echocam.bucket.manifest import DETECTIONS_PARQUET
from echocam.errors import InvalidParams
from echocam.view.data import RunData

#: The queue's orders.  ``stratified``: equal numbers from each of :data:`BINS` probability bins
#: between the class's lowest probability and 1 (what a threshold fit needs); ``uncertain``:
#: nearest the class's threshold; ``random``: a shuffle fixed per reviewer; ``similar``: most
#: like one detection (``like=ID``), by its call-box embedding.
STRATEGIES = ("top", "stratified", "uncertain", "random", "similar")
BINS = 10
MAX_ITEMS = 100
CONTEXT_S = 2.0  # seconds of spectrogram either side of the window
PRE_ROLL_S = 0.5  # seconds of audio before the window
_REFRESH_S = 2.0  # how often other viewers' verdicts are read
_TOKENS = 1024  # CSRF tokens remembered (one per page load)
COLUMNS = (
    "source_key, begin_s, end_s, class_name, class_id, probability, peak_time_s, peak_freq_hz, "
    "box_begin_s, box_end_s, box_low_hz, box_high_hz, "
    "call_begin_s, call_end_s, call_low_hz, call_high_hz"
)
# The hash that orders ``random`` and the draws inside ``stratified``'s bins: per reviewer, so two
# reviewers sampling at once mostly see different detections.
_SHUFFLE = "hash(source_key || '@' || CAST(begin_s AS VARCHAR) || '#' || class_name || ?)"


class Review:
    """One viewer's review state: the reviewer, the run's verdicts, the CSRF tokens it issued."""

    def __init__(self, data: RunData, *, reviewer: str):
        self.data = data
        self.reviewer = reviews.check_reviewer(reviewer)
        # ``uncertain`` orders by the distance to these: the viewer's --min-probability
        self.thresholds = dict(data.class_min_probability)
        self.log = reviews.Reviews.load(data.store)
        self._tokens: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._refreshed = time.monotonic()

    # CSRF: one token per page; any issued (and not yet forgotten) token is good
    def issue_token(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = None
            while len(self._tokens) > _TOKENS:
                self._tokens.popitem(last=False)
        return token

    def token_ok(self, token: str) -> bool:
        with self._lock:
            known = list(self._tokens)
        return any(secrets.compare_digest(token.encode(), t.encode()) for t in known)

    def _refresh(self) -> None:
        if time.monotonic() - self._refreshed > _REFRESH_S:
            self._refreshed = time.monotonic()
            self.log.refresh()

    def threshold(self, class_name: str) -> float:
        return self.thresholds.get(class_name, self.data.min_probability or 0.5)

    # the queue
    def queue(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """Items to judge, as ``GET /api/review/queue`` gives them (``query``: its parameters)."""
        strategy = query.get("strategy") or "top"
        if strategy not in STRATEGIES:
            raise InvalidParams(f"strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
        n = min(max(int(query.get("n") or 10), 1), MAX_ITEMS)
        low, high = (
            _probability(query.get("min_probability")),
            _probability(query.get("max_probability")),
        )
        class_name = query.get("class") or None
        include = query.get("include_reviewed") in ("1", "true")
        self._refresh()
        seen = set() if include else self.log.seen(self.reviewer)
        if strategy == "similar":
            rows = self._similar(query.get("like", ""), n + len(seen), class_name, low, high)
        else:
            rows = self._select(strategy, n + len(seen), class_name, low, high)
        items = []
        for row in rows:
            item_id = detection_id(row["source_key"], row["begin_s"], row["class_name"])
            if item_id in seen:
                continue
            items.append(self._item(item_id, row))
            if len(items) == n:
                break
        return items

    def _select(
        self,
        strategy: str,
        limit: int,
        class_name: str | None,
        low: float | None,
        high: float | None,
    ) -> list[dict[str, Any]]:
        path = self.data.table(DETECTIONS_PARQUET)
        if path is None:
            return []
        where, args = ["TRUE"], []
        if class_name:
            where.append("class_name = ?")
            args.append(class_name)
        if low is not None:
            where.append("probability >= ?")
            args.append(low)
        if high is not None:
            where.append("probability <= ?")
            args.append(high)
        cond = " AND ".join(where)
        src = f"SELECT {COLUMNS} FROM read_parquet(?) WHERE {cond}"
        if strategy == "top":
            sql = f"{src} ORDER BY probability DESC, source_key, begin_s, class_name LIMIT ?"
            return self.data.query(sql, [str(path), *args, limit])
        if strategy == "random":
            sql = f"{src} ORDER BY {_SHUFFLE}, source_key, begin_s LIMIT ?"
            return self.data.query(sql, [str(path), *args, self.reviewer, limit])
        if strategy == "uncertain":
            known = list(self.thresholds.items())
            case = " ".join("WHEN ? THEN ?" for _ in known)
            other = float(self.data.min_probability or 0.5)
            thr = f"CASE class_name {case} ELSE {other!r} END" if known else repr(other)
            sql = (
                f"{src} ORDER BY abs(probability - ({thr})), source_key, begin_s, class_name "
                "LIMIT ?"
            )
            flat = [v for pair in known for v in pair]
            return self.data.query(sql, [str(path), *args, *flat, limit])
        # stratified: bins from each class's lowest probability to 1, drawn round-robin
        sql = f"""
            WITH d AS ({src}),
            lo AS (SELECT class_name c, min(probability) p0 FROM d GROUP BY class_name),
            b AS (SELECT d.*, least({BINS - 1}, floor((probability - p0)
                        / greatest(1 - p0, 1e-9) * {BINS}))::INT AS bin
                  FROM d JOIN lo ON d.class_name = lo.c),
            r AS (SELECT *, row_number() OVER (PARTITION BY class_name, bin
                        ORDER BY {_SHUFFLE}) AS draw FROM b)
            SELECT {COLUMNS}, bin FROM r ORDER BY draw, class_name, bin LIMIT ?"""
        return self.data.query(sql, [str(path), *args, self.reviewer, limit])

    def _similar(
        self,
        like: str,
        limit: int,
        class_name: str | None,
        low: float | None,
        high: float | None,
    ) -> list[dict[str, Any]]:
        from echocam.search import parse_detection_id, run_batches, scan, stored_vector

        key, begin, name = parse_detection_id(like)
        vector, window = stored_vector([self.data.store], key, begin, name)
        found = scan(
            run_batches(self.data.store),
            vector,
            top=limit,
            class_name=class_name,
            exclude=[(key, window)],
        )
        hits = found.to_pylist() if found.num_rows else []
        rows = self.rows([(h["source_key"], h["begin_s"], h["class_name"]) for h in hits])
        by_id = {detection_id(r["source_key"], r["begin_s"], r["class_name"]): r for r in rows}
        out = []
        for h in hits:
            row = by_id.get(detection_id(h["source_key"], h["begin_s"], h["class_name"]))
            p = None if row is None else row["probability"]
            if row is None or (low is not None and p < low) or (high is not None and p > high):
                continue
            out.append(row | {"similarity": h["similarity"]})
        return out

    def rows(self, ids: list[tuple[str, float, str]]) -> list[dict[str, Any]]:
        """The detections-table rows of ``ids`` (source key, window start, class)."""
        path = self.data.table(DETECTIONS_PARQUET)
        if path is None or not ids:
            return []
        keys, starts, names = (list(col) for col in zip(*ids, strict=True))
        sql = f"""
            WITH q AS (SELECT unnest(?::VARCHAR[]) AS k, unnest(?::DOUBLE[]) AS t,
                              unnest(?::VARCHAR[]) AS c)
            SELECT DISTINCT {", ".join("d." + c.strip() for c in COLUMNS.split(","))}
            FROM read_parquet(?) d JOIN q
              ON d.source_key = q.k AND abs(d.begin_s - q.t) < 1e-6 AND d.class_name = q.c"""
        return self.data.query(sql, [keys, starts, names, str(path)])

    def _item(self, item_id: str, row: dict[str, Any]) -> dict[str, Any]:
        record = self.data.record(row["source_key"]) or {}
        duration = record.get("duration_s") or row["end_s"]
        others = []
        for w in record.get("windows") or []:
            if abs(w["start_s"] - row["begin_s"]) < 1e-6:
                others = [
                    {"class_name": p["class_name"], "probability": p["probability"]}
                    for p in w.get("predictions", [])
                    if p["class_name"] != row["class_name"]
                ]
                break
        t0, t1 = context_span(row["begin_s"], row["end_s"], duration)
        return {
            "id": item_id,
            **{k: v for k, v in row.items() if k != "bin"},
            "threshold": self.threshold(row["class_name"]),
            "others": others[:4],
            "view": {"t0": t0, "t1": t1, "play_from": max(0.0, row["begin_s"] - PRE_ROLL_S)},
        }

    # verdicts
    def judge(self, body: Any) -> list[str]:
        """Check and store the verdicts of a ``POST /api/review/verdicts`` body; their ids, in
        order, once durable.  InvalidParams names what is wrong (nothing is stored then)."""
        given = body.get("verdicts") if isinstance(body, dict) else None
        if not isinstance(given, list) or not given:
            raise InvalidParams('expected {"verdicts": [{"id": ..., "verdict": ...}, ...]}')
        if len(given) > reviews.MAX_BATCH:
            raise InvalidParams(f"{len(given)} verdicts: at most {reviews.MAX_BATCH} a request")
        from echocam.search import parse_detection_id

        wanted = []
        for i, v in enumerate(given):
            if not isinstance(v, dict) or not isinstance(v.get("id"), str) or len(v["id"]) > 2048:
                raise InvalidParams(f"verdict {i}: needs an id (a detection id)")
            wanted.append(parse_detection_id(v["id"]))
        rows = self.rows(wanted)
        by_id = {detection_id(r["source_key"], r["begin_s"], r["class_name"]): r for r in rows}
        run = self.data.run()
        out = []
        for i, v in enumerate(given):
            row = by_id.get(detection_id(*wanted[i]))
            if row is None:
                raise InvalidParams(f"verdict {i}: no detection {v['id']!r} in this run")
            label = v.get("label")
            if label == row["class_name"]:
                label = None  # "it is this class" is a plain yes
            at = v.get("at")
            if at is not None and not isinstance(at, str):
                raise InvalidParams(f"verdict {i}: at must be an ISO 8601 time")
            out.append(
                reviews.verdict(
                    row,
                    verdict=str(v.get("verdict")),
                    label=label if isinstance(label, str) or label is None else str(label),
                    reviewer=self.reviewer,
                    run=run,
                    at=at,
                )
            )
        self.log.write(out)
        return [v["id"] for v in out]

    def mine(self, *, limit: int = 50) -> dict[str, Any]:
        """This reviewer's standing verdicts, latest first, and their counts."""
        self._refresh()
        standing = sorted(
            self.log.standing(reviewer=self.reviewer), key=lambda v: v["at"], reverse=True
        )
        counts: dict[str, int] = {}
        for v in standing:
            counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
        keep = (
            "id",
            "source_key",
            "begin_s",
            "class_name",
            "verdict",
            "label",
            "at",
            "probability",
        )
        return {
            "reviewer": self.reviewer,
            "counts": counts,
            "verdicts": [{k: v[k] for k in keep} for v in standing[:limit]],
        }


def context_span(begin_s: float, end_s: float, duration_s: float) -> tuple[float, float]:
    """The seconds a review item shows: the window and :data:`CONTEXT_S` either side, within
    the recording."""
    return max(0.0, begin_s - CONTEXT_S), min(max(duration_s, end_s), end_s + CONTEXT_S)


def _probability(raw: str | None) -> float | None:
    if raw in (None, ""):
        return None
    p = float(raw)
    if not 0.0 <= p <= 1.0:
        raise InvalidParams(f"probability {raw!r}: between 0 and 1")
    return p


def crop(images: Any, record: dict[str, Any], params: dict[str, Any], row: dict[str, Any]) -> bytes:
    """The spectrogram around one detection (PNG): :func:`context_span` seconds, the evidence
    box in cyan and the call box in white (as on the recording page), the window's edges grey."""
    from echocam.view.axes import MelAxis, TimeAxis
    from echocam.view.images import image_ref

    picture = image_ref(record, "spectrogram")
    if record.get("status") != "ok" or picture is None:
        raise KeyError("no spectrogram for that recording")
    dt = TimeAxis(int(params["sample_rate"]), int(params["hop_length"])).seconds_per_column
    mel, n = MelAxis.of(params), int(params["n_mels"])
    t0, t1 = context_span(row["begin_s"], row["end_s"], record.get("duration_s") or row["end_s"])

    def rect(b0: float, b1: float, lo: float, hi: float) -> tuple[float, float, float, float]:
        return (b0 / dt, mel.row(hi), b1 / dt + 1, mel.row(lo) + 1)

    marks = [
        (rect(row["begin_s"], row["begin_s"], 0, params["sample_rate"] / 2), (140, 140, 140), 1),
        (rect(row["end_s"], row["end_s"], 0, params["sample_rate"] / 2), (140, 140, 140), 1),
    ]
    if row.get("box_begin_s") is not None:
        box = ("box_begin_s", "box_end_s", "box_low_hz", "box_high_hz")
        marks.append((rect(*(row[k] for k in box)), (52, 245, 255), 1))
    if row.get("call_begin_s") is not None:
        call = ("call_begin_s", "call_end_s", "call_low_hz", "call_high_hz")
        marks.append((rect(*(row[k] for k in call)), (255, 255, 255), 2))
    return images.crop(
        picture, x0=round(t0 / dt), x1=round(t1 / dt), y0=0, y1=n, width=900, marks=tuple(marks)
    )
