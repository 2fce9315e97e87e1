"""``echocam report``: one static, self-contained ``report.html`` written into the run.

Counts by status and error code, a class histogram, the top detections with thumbnails of their
evidence (PNG data URIs) and the failed recordings by error code: inline CSS, no script, no
link that needs a server, so it opens from a bucket or a synced folder. The markup is
``templates/report.html``; this module gathers its values.
"""

from __future__ import annotations

import base64
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from echocam.bucket.manifest import MANIFEST_PARQUET
from echocam.view.axes import MelAxis, TimeAxis
from echocam.view.data import RunData
from echocam.view.images import Images, image_ref
from echocam.view.templating import render

REPORT_NAME = "report.html"


def detection_crop(
    images: Images, record: dict, params: dict, begin_s: float, class_id: int
) -> bytes | None:
    """The overlay band of one detection's window with its evidence box drawn (PNG); the
    spectrogram's window where the run wrote no overlay (``--outputs``)."""
    overlay = image_ref(record, "overlay")
    picture = overlay or image_ref(record, "spectrogram")
    if record.get("status") != "ok" or picture is None:
        return None
    for w in record.get("windows") or []:
        if abs(w["start_s"] - begin_s) > 1e-6:
            continue
        for c_index, c in enumerate(w.get("explained", [])):
            if c["class_id"] != class_id:
                continue
            band = c_index if overlay is not None else 0
            times = TimeAxis(int(params["sample_rate"]), int(params["hop_length"]))
            mel = MelAxis.of(params)
            n = int(params["n_mels"])
            dt = times.seconds_per_column
            x0 = round(w["start_s"] / dt)
            frames = 1 + round(record["window_seconds"] * times.sample_rate) // times.hop_length
            box = None
            if "box_begin_s" in c:
                box = (
                    c["box_begin_s"] / dt,
                    band * n + mel.row(c["box_high_hz"]),
                    c["box_end_s"] / dt + 1,
                    band * n + mel.row(c["box_low_hz"]) + 1,
                )
            return images.crop(
                picture, x0=x0, x1=x0 + frames, y0=band * n, y1=(band + 1) * n, box=box
            )
    return None


def build(data: RunData, *, top: int = 24, per_recording: int = 2, per_code: int = 20) -> str:
    """The report's HTML."""
    run, summary, params = data.run(), data.summary(), data.params()
    counts = data.counts()
    manifest = data.table(MANIFEST_PARQUET)
    dets = data.detections_source()
    model = run.get("model") or {}
    facts = [
        ("input", run.get("input")),
        ("output", data.store.uri),
        ("model", f"{model.get('arch', '')} {model.get('weights_kind', '')} "
                  f"{(model.get('sha256') or '')[:12]} ({model.get('weights', '')})"),
        ("recordings", summary.get("recordings")),
        ("windows", summary.get("windows")),
        ("detections", summary.get("detections")),
        ("audio", f"{(summary.get('audio_seconds') or 0) / 3600:.2f} h"),
        ("started / finished", f"{run.get('created_at')} / {summary.get('finished_at')}"),
        ("parameters", ", ".join(f"{k}={v}" for k, v in sorted(params.items()))),
        ("report written", datetime.now(UTC).isoformat(timespec="seconds")),
    ]  # fmt: skip

    top_classes = {c["name"]: c["n"] for c in data.classes()}
    det_classes = {c["name"]: c for c in data.detection_classes()}
    names = sorted(set(top_classes) | set(det_classes), key=lambda n: -top_classes.get(n, 0))
    classes = [
        {
            "name": name,
            "n": top_classes.get(name, 0),
            "detections": det_classes.get(name, {}).get("n", 0),
            "mean_p": det_classes.get(name, {}).get("mean_p"),
            "max_p": det_classes.get(name, {}).get("max_p"),
        }
        for name in names
    ]

    rows = []
    if dets is not None:
        src, args = dets
        rows = data.query(
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY source_key "
            f"ORDER BY probability DESC, begin_s) AS rank FROM {src}) "
            "WHERE rank <= ? ORDER BY probability DESC, source_key, begin_s LIMIT ?",
            [*args, per_recording, top],
        )
    images = Images(data.get)
    figures = []  # (detection, its evidence as base64 PNG or None)
    for d in rows:
        record = data.record(d["source_key"])
        png = record and detection_crop(images, record, params, d["begin_s"], d["class_id"])
        figures.append((d, base64.b64encode(png).decode() if png else None))

    failed = []
    if manifest is not None:
        failed = data.query(
            "SELECT source_key, error_code, error_message FROM (SELECT *, row_number() OVER "
            "(PARTITION BY error_code ORDER BY source_key) AS rank FROM read_parquet(?) "
            "WHERE status <> 'ok') WHERE rank <= ? ORDER BY error_code, source_key",
            [str(manifest), per_code],
        )
    totals = {c["name"]: c["n"] for c in counts["code"]}
    shown = Counter(r["error_code"] for r in failed)
    more = [
        f"{code}: {totals[code] - k} more" for code, k in shown.items() if totals.get(code, 0) > k
    ]

    return render(
        "report.html",
        run_id=run.get("run_id") or "",
        facts=facts,
        counts=counts,
        classes=classes,
        most_classes=max(top_classes.values(), default=0),
        per_recording=per_recording,
        figures=figures,
        failed=failed,
        more=more,
    )


def write(uri: str, *, client_factory=None, **minimums: Any) -> str:
    """Write ``report.html`` into the run at ``uri``; returns where it went.  ``minimums``:
    ``min_probability``, ``class_min_probability`` (:class:`RunData`)."""
    data = RunData.open(uri, client_factory=client_factory, **minimums)
    try:
        html = build(data)
        data.store.put(REPORT_NAME, html.encode("utf-8"))
        return f"{data.store.uri}/{REPORT_NAME}"
    finally:
        data.close()
