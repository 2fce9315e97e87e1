"""``echocam report``: one static, self-contained ``report.html`` written into the run.

Counts by status and error code, a class histogram, the top detections with thumbnails of their
evidence (PNG data URIs) and the failed recordings by error code: inline CSS, no script, no
link that needs a server, so it opens from a bucket or a synced folder.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from html import escape
from typing import Any

from echocam.bucket.manifest import DETECTIONS_PARQUET, MANIFEST_PARQUET
from echocam.view.axes import MelAxis, TimeAxis
from echocam.view.data import RunData
from echocam.view.images import Images, image_ref

REPORT_NAME = "report.html"

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#1c1e24;background:#fafafa;font-size:14px}
h1{font-size:20px}h2{font-size:16px;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #e4e4e4;
text-align:left;vertical-align:top}th{font-weight:500;color:#666;font-size:12px}
td.num{text-align:right;font-variant-numeric:tabular-nums}.bar{background:#e8902a;height:10px;
display:inline-block;vertical-align:middle}.bar.bad{background:#d9534f}.muted{color:#777}
.det{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8em}
.det figure{margin:0;background:#fff;border:1px solid #ddd;padding:6px;border-radius:5px}
.det img{width:240px;display:block}.det figcaption{font-size:12px;word-break:break-all}
code{font-size:12px}
"""


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


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


def _bar(n: float, most: float, *, bad: bool = False, width: int = 240) -> str:
    px = 0 if not most else max(1, round(width * n / most))
    return f'<span class="bar{" bad" if bad else ""}" style="width:{px}px"></span>'


def build(data: RunData, *, top: int = 24, per_recording: int = 2, per_code: int = 20) -> str:
    """The report's HTML."""
    run, summary, params = data.run(), data.summary(), data.params()
    counts = data.counts()
    manifest = data.table(MANIFEST_PARQUET)
    dets = data.table(DETECTIONS_PARQUET)
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>echocam report · {e(run.get('run_id', '')[:12])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>echocam report: run <code>{e(run.get('run_id'))}</code></h1>",
        "<table>",
    ]
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
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts]
    out.append("</table>")

    out.append('<h2 id="status">Recordings by status and error code</h2><table>')
    most = max([c["n"] for c in counts["status"]] or [0])
    for c in counts["status"]:
        bad = c["name"] != "ok"
        out.append(
            f'<tr><th>{e(c["name"])}</th><td class="num">{c["n"]}</td>'
            f"<td>{_bar(c['n'], most, bad=bad)}</td></tr>"
        )
    for c in counts["code"]:
        out.append(
            f'<tr><td>&nbsp;&nbsp;<code>{e(c["name"])}</code></td><td class="num">{c["n"]}</td>'
            f"<td>{_bar(c['n'], most, bad=True)}</td></tr>"
        )
    out.append("</table>")

    out.append('<h2 id="classes">Classes</h2>')
    top_classes = {c["name"]: c["n"] for c in data.classes()}
    det_classes = {c["name"]: c for c in data.detection_classes()}
    names = sorted(set(top_classes) | set(det_classes), key=lambda n: -top_classes.get(n, 0))
    most = max(list(top_classes.values()) or [0])
    out.append(
        "<table><tr><th>class</th><th>recordings (top class)</th><th></th><th>detections</th>"
        "<th>mean p</th><th>max p</th></tr>"
    )
    for name in names:
        d = det_classes.get(name, {})
        n = top_classes.get(name, 0)
        out.append(
            f'<tr><td>{e(name)}</td><td class="num">{n}</td><td>{_bar(n, most)}</td>'
            f'<td class="num">{d.get("n", 0)}</td><td class="num">{_p(d.get("mean_p"))}</td>'
            f'<td class="num">{_p(d.get("max_p"))}</td></tr>'
        )
    out.append("</table>")

    out.append(f'<h2 id="top">Top detections (at most {per_recording} per recording)</h2>')
    rows = []
    if dets is not None:
        rows = data.query(
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY source_key "
            "ORDER BY probability DESC, begin_s) AS rank FROM read_parquet(?)) "
            "WHERE rank <= ? ORDER BY probability DESC, source_key, begin_s LIMIT ?",
            [str(dets), per_recording, top],
        )
    images = Images(data.get)
    figures = []
    for d in rows:
        record = data.record(d["source_key"])
        png = record and detection_crop(images, record, params, d["begin_s"], d["class_id"])
        img = (
            f'<img alt="evidence" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            if png
            else '<p class="muted">(no image)</p>'
        )
        figures.append(
            f"<figure>{img}<figcaption><b>{e(d['class_name'])}</b> p={d['probability']:.3f}"
            f"<br>{e(d['source_key'])}<br>{d['box_begin_s']:.2f}–{d['box_end_s']:.2f} s, "
            f"{d['box_low_hz']:.0f}–{d['box_high_hz']:.0f} Hz</figcaption></figure>"
        )
    out.append(f'<div class="det">{"".join(figures)}</div>' if figures else "<p>none</p>")

    out.append('<h2 id="failed">Failed recordings</h2>')
    failed = []
    if manifest is not None:
        failed = data.query(
            "SELECT source_key, error_code, error_message FROM (SELECT *, row_number() OVER "
            "(PARTITION BY error_code ORDER BY source_key) AS rank FROM read_parquet(?) "
            "WHERE status <> 'ok') WHERE rank <= ? ORDER BY error_code, source_key",
            [str(manifest), per_code],
        )
    if failed:
        out.append("<table><tr><th>error code</th><th>recording</th><th>message</th></tr>")
        totals = {c["name"]: c["n"] for c in counts["code"]}
        shown: dict[str, int] = {}
        for r in failed:
            shown[r["error_code"]] = shown.get(r["error_code"], 0) + 1
            out.append(
                f"<tr><td><code>{e(r['error_code'])}</code></td><td>{e(r['source_key'])}</td>"
                f"<td>{e(r['error_message'])}</td></tr>"
            )
        out.append("</table>")
        more = [
            f"{code}: {totals[code] - k} more"
            for code, k in shown.items()
            if totals.get(code, 0) > k
        ]
        if more:
            out.append(f'<p class="muted">not listed: {e("; ".join(more))}</p>')
    else:
        out.append("<p>none</p>")
    out.append("</body></html>\n")
    return "".join(out)


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def write(uri: str, *, client_factory=None) -> str:
    """Write ``report.html`` into the run at ``uri``; returns where it went."""
    data = RunData.open(uri, client_factory=client_factory)
    try:
        html = build(data)
        data.store.put(REPORT_NAME, html.encode("utf-8"))
        return f"{data.store.uri}/{REPORT_NAME}"
    finally:
        data.close()
