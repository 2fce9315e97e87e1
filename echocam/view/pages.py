"""The viewer's HTML pages: plain server-rendered HTML, every value escaped.

The recording page hands its data to ``static/view.js`` in a ``<script type="application/json">``
block (the Content-Security-Policy allows no inline script).
"""

from __future__ import annotations

import math
from html import escape
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import quote, urlencode

from echocam.view.axes import MelAxis, TimeAxis
from echocam.view.data import DETECTION_SORTS, SORTS, Filters, RunData, audio_type, dumps
from echocam.view.images import TILE, Tiled, image_ref, zoom_levels

PAGE_SIZE = 48
GUTTER = 86  # px: the frequency axis column


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def file_url(key: str) -> str:
    return "/file/" + quote(key, safe="/")


def rec_url(source_key: str) -> str:
    return "/rec?" + urlencode({"key": source_key})


def _template() -> Template:
    text = resources.files(__package__).joinpath("templates/page.html").read_text("utf-8")
    return Template(text)


def page(data: RunData, *, title: str, body: str, here: str) -> bytes:
    run = data.run()
    failed = (data.summary().get("by_status") or {}).get("failed")
    links = [("/", "Gallery"), ("/detections", "Detections"), ("/failed", "Failed")]
    nav = " ".join(
        f'<a href="{u}"{" class=here" if u == here else ""}>{e(name)}'
        f"{f' ({failed})' if name == 'Failed' and failed else ''}</a>"
        for u, name in links
    )
    run_id = (run.get("run_id") or "")[:12]
    html = _template().substitute(
        title=e(title),
        nav=nav,
        run=e(f"run {run_id} · {data.store.uri}"),
        run_title=e(run.get("input") and f"input {run['input']}"),
        body=body,
    )
    return html.encode("utf-8")


def _options(values, selected: str, *, any_label: str) -> str:
    out = [f'<option value="">{e(any_label)}</option>']
    for value, label in values:
        sel = " selected" if str(value) == selected else ""
        out.append(f'<option value="{e(value)}"{sel}>{e(label)}</option>')
    return "".join(out)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _class_and_probability(label: str, classes: list[dict], filters) -> str:
    """The class menu (with counts) and the probability range of a filter form."""
    options = _options(
        [(c["name"], f"{c['name']} ({c['n']})") for c in classes],
        filters.klass,
        any_label="any class",
    )
    return f"""  <label>{label}
    <select name="class">{options}</select></label>
  <label>probability from
    <input type="number" name="pmin" min="0" max="1" step="0.01" value="{_num(filters.pmin)}">
  </label>
  <label>to
    <input type="number" name="pmax" min="0" max="1" step="0.01" value="{_num(filters.pmax)}">
  </label>"""


def _pager(total: int, offset: int, limit: int, query: dict[str, str], path: str) -> str:
    first, last = (offset + 1, min(total, offset + limit)) if total else (0, 0)
    parts = [f'<span class="muted">{first}–{last} of {total}</span>']
    for label, at in (("« first", 0), ("‹ previous", offset - limit), ("next ›", offset + limit)):
        if label.startswith("next") and at >= total or not label.startswith("next") and offset <= 0:
            continue
        q = {**query, "offset": str(max(0, at))}
        parts.append(f'<a href="{path}?{e(urlencode(q))}" rel="nofollow">{label}</a>')
    return f'<nav class="pager">{" ".join(parts)}</nav>'


def gallery(data: RunData, query: dict[str, str]) -> bytes:
    filters = Filters.parse(query)
    sort = query.get("sort", "key")
    offset = _int(query.get("offset"), 0)
    total, rows = data.recordings(filters, sort=sort, offset=offset, limit=PAGE_SIZE)
    counts = data.counts()
    form = f"""
<form class="filters" method="get" action="/">
{_class_and_probability("class (recording's top)", data.classes(), filters)}
  <label>status
    <select name="status">{
        _options(
            [(s["name"], f"{s['name']} ({s['n']})") for s in counts["status"]],
            filters.status,
            any_label="any status",
        )
    }</select></label>
  <label>error code
    <select name="code">{
        _options(
            [(c["name"], f"{c['name']} ({c['n']})") for c in counts["code"]],
            filters.code,
            any_label="any code",
        )
    }</select></label>
  <label>key contains <input type="search" name="q" value="{e(filters.q)}"></label>
  <label>sort
    <select name="sort">{
        "".join(
            f'<option value="{k}"{" selected" if k == sort else ""}>{e(label)}</option>'
            for k, label in (
                ("key", "source key"),
                ("probability", "probability, highest first"),
                ("probability_asc", "probability, lowest first"),
                ("duration", "duration, longest first"),
                ("finished", "finished, latest first"),
            )
            if k in SORTS
        )
    }</select></label>
  <button type="submit" id="apply">Apply</button>
  <a href="/">reset</a>
</form>"""
    params = data.params()
    sps = (params.get("sample_rate") or 22050) / (params.get("hop_length") or 200)
    cards = []
    for r in rows:
        key = r["source_key"]
        picture = r["overlay_key"] or r["spectrogram_key"]  # what the run's --outputs wrote
        if r["status"] == "ok":
            cols = min(math.ceil(30 * sps), 10**7)
            thumb = f"/thumb?{e(urlencode({'key': picture, 'cols': cols}))}"
            img = (
                f'<img src="{thumb}" loading="lazy" alt="image of {e(key)}">'
                if picture
                else '<div class="noimg">no image</div>'
            )
            meta = (
                f"<b>{e(r['top_class_name'])}</b> {r['top_probability']:.3f} · "
                f"{r['duration_s']:.1f} s · {r['n_windows']} windows"
            )
        else:
            img = f'<div class="noimg">{e(r["error_code"] or r["status"])}</div>'
            meta = f'<span class="status-failed">{e(r["error_message"])}</span>'
        cards.append(
            f'<a class="card" href="{e(rec_url(key))}" data-status="{e(r["status"])}">{img}'
            f'<div class="key">{e(key)}</div><div class="meta">{meta}</div></a>'
        )
    keep = {k: v for k, v in query.items() if k != "offset" and v}
    missing = (
        '<p class="error">This run has no manifest.parquet yet (a run still going, or one '
        "that stopped): <code>echocam manifest DEST</code> writes it from the records.</p>"
        if data.table("manifest.parquet") is None
        else ""
    )
    body = (
        "<h1>Recordings</h1>"
        + missing
        + form
        + f'<p class="count" id="count">{total} recordings match</p>'
        + f'<div class="gallery" id="gallery">{"".join(cards)}</div>'
        + _pager(total, offset, PAGE_SIZE, keep, "/")
    )
    return page(data, title="Recordings", body=body, here="/")


def detections(data: RunData, query: dict[str, str]) -> bytes:
    filters = Filters.parse(query)
    sort = query.get("sort", "probability")
    offset = _int(query.get("offset"), 0)
    total, rows = data.detections(filters, sort=sort, offset=offset, limit=50)
    form = f"""
<form class="filters" method="get" action="/detections">
{_class_and_probability("class", data.detection_classes(), filters)}
  <label>key contains <input type="search" name="q" value="{e(filters.q)}"></label>
  <label>sort <select name="sort">{
        "".join(
            f'<option value="{k}"{" selected" if k == sort else ""}>{k}</option>'
            for k in DETECTION_SORTS
        )
    }</select></label>
  <button type="submit">Apply</button> <a href="/detections">reset</a>
</form>"""
    trs = []
    for d in rows:
        q = urlencode({"key": d["source_key"], "t": d["begin_s"], "class_id": d["class_id"]})
        link = f"{rec_url(d['source_key'])}#t={d['box_begin_s']:.3f}"
        trs.append(
            f'<tr class="det"><td><a href="{e(link)}"><img src="/crop?{e(q)}" loading="lazy" '
            f'alt="evidence"></a></td><td><a href="{e(link)}">{e(d["source_key"])}</a></td>'
            f'<td>{e(d["class_name"])}</td><td class="num">{d["probability"]:.3f}</td>'
            f'<td class="num">{d["begin_s"]:.2f}–{d["end_s"]:.2f}</td>'
            f'<td class="num">{d["box_begin_s"]:.2f}–{d["box_end_s"]:.2f}</td>'
            f'<td class="num">{d["box_low_hz"]:.0f}–{d["box_high_hz"]:.0f}</td></tr>'
        )
    keep = {k: v for k, v in query.items() if k != "offset" and v}
    body = (
        "<h1>Detections</h1>"
        + form
        + f'<p class="count">{total} detections match (a window × explained class each)</p>'
        + "<table><tr><th>evidence</th><th>recording</th><th>class</th><th>probability</th>"
        + "<th>window (s)</th><th>box (s)</th><th>box (Hz)</th></tr>"
        + "".join(trs)
        + "</table>"
        + _pager(total, offset, 50, keep, "/detections")
    )
    return page(data, title="Detections", body=body, here="/detections")


def failed(data: RunData, query: dict[str, str]) -> bytes:
    code = query.get("code", "")
    offset = _int(query.get("offset"), 0)
    counts = data.counts()["code"]
    total, rows = data.failed(code, offset=offset, limit=100)
    codes = " ".join(
        f'<a href="/failed?{e(urlencode({"code": c["name"]}))}">{e(c["name"])} ({c["n"]})</a>'
        for c in counts
    )
    trs = "".join(
        f'<tr><td><a href="{e(rec_url(r["source_key"]))}">{e(r["source_key"])}</a></td>'
        f'<td class="code">{e(r["error_code"])}</td><td>{e(r["error_message"])}</td></tr>'
        for r in rows
    )
    title = f"Failed recordings{f': {code}' if code else ''}"
    body = (
        f"<h1>{e(title)}</h1>"
        + f'<p class="codes">by error code: {codes or "none"} <a href="/failed">all</a></p>'
        + '<table id="failed"><tr><th>recording</th><th>error code</th><th>message</th></tr>'
        + trs
        + "</table>"
        + _pager(total, offset, 100, {"code": code} if code else {}, "/failed")
    )
    return page(data, title="Failed", body=body, here="/failed")


def recording(data: RunData, source_key: str) -> bytes | None:
    record = data.record(source_key)
    if record is None:
        return None
    params = data.params()
    has_audio = audio_type(source_key) is not None
    audio = (
        f'<audio id="audio" controls preload="metadata" '
        f'src="/audio?{e(urlencode({"key": source_key}))}"></audio>'
        if has_audio
        else '<span class="muted">(no playable source)</span>'
    )
    outputs = record.get("outputs") or {}
    links = " ".join(
        f'<a href="{e(file_url(outputs[name]))}">{e(outputs[name].rsplit("/", 1)[-1])}{note}</a>'
        for name, note in (
            ("spectrogram", ""),
            ("overlay", ""),
            ("cam", ""),
            ("selections", " (Raven)"),
            ("labels", " (Audacity)"),
        )
        if outputs.get(name)
    )
    links = f'<a href="{e(file_url(record["record_key"]))}">record.json</a> ' + links
    head = f"<h1>{e(source_key)}</h1>"
    if record.get("status") != "ok":
        body = (
            head
            + f'<div class="error"><b class="code">{e(record.get("error_code"))}</b>: '
            + f"{e(record.get('error_message'))}</div>"
            + f'<div class="toolbar">{audio}</div><p class="links">{links}</p>'
        )
        return page(data, title=source_key, body=body, here="")

    mel = MelAxis.of(params)
    times = TimeAxis(int(params["sample_rate"]), int(params["hop_length"]))
    n = int(params["n_mels"])
    # The images the run wrote (--outputs), stacked: the spectrogram, then one band per class.
    sizes = record.get("image_sizes") or {}
    images, width = [], 0
    for name in ("spectrogram", "overlay"):
        if outputs.get(name) and name in sizes:
            height, width = sizes[name]
            top = sum(im["height"] for im in images)
            images.append(
                {
                    "key": outputs[name],
                    "query": _tile_query(record, name),
                    "top": top,
                    "height": height,
                }
            )
    for im in images:
        im["zmax"] = zoom_levels(width)
    has_overlay = bool(images) and images[-1]["key"] == outputs.get("overlay")
    bands = images[-1]["height"] // n if has_overlay else 0
    windows = []
    for w in record.get("windows") or []:
        explained = []
        for c in w.get("explained", []):
            item = {"name": c["class_name"], "p": c["probability"]}
            if "box_begin_s" in c:
                item["box"] = [
                    c["box_begin_s"],
                    c["box_end_s"],
                    round(mel.row(c["box_high_hz"]), 3),
                    round(mel.row(c["box_low_hz"]), 3),
                ]
            if c.get("call_begin_s") is not None:  # pixel edges: a band's edge is a half row
                item["call"] = [
                    c["call_begin_s"],
                    c["call_end_s"],
                    round(mel.row(c["call_high_hz"]) + 0.5, 3),
                    round(mel.row(c["call_low_hz"]) + 0.5, 3),
                ]
            explained.append(item)
        windows.append({"t": w["start_s"], "explained": explained})
    view = {
        "width": width,
        "dt": times.seconds_per_column,
        "duration": record.get("duration_s"),
        "window": record.get("window_seconds"),
        "band": n,
        "bands": bands,
        # where each explained class's evidence boxes go: its overlay band, or the spectrogram
        "band_top": images[-1]["top"] if has_overlay else 0,
        "band_stride": n if has_overlay else 0,
        "tile": TILE,
        "images": images,
        "windows": windows,
    }
    names = (["spectrogram"] if outputs.get("spectrogram") else []) + _band_names(record, bands)
    axis = _freq_axis(mel, n, names=names)
    bars = (
        '<div class="colourbars">'
        '<div class="colourbar"><span class="name">spectrogram (magma)</span>'
        f'<span>−{params.get("top_db", 80):g} dB</span><img src="/colourbar/magma.png" '
        'alt="magma colour bar"><span>0 dB re the window\'s maximum</span></div>'
        + (
            '<div class="colourbar"><span class="name">class activation map (plasma, '
            f"drawn at alpha {params.get('alpha', 0.5):g} over the spectrogram)</span>"
            '<span>0</span><img src="/colourbar/plasma.png" alt="plasma colour bar">'
            "<span>1 (each window's maximum)</span></div>"
            if has_overlay
            else ""
        )
        + "</div>"
    )
    tops = " ".join(
        f"<span><b>{e(p['class_name'])}</b> {p['probability']:.3f}</span>"
        for p in record.get("top_predictions") or []
    )
    meta = (
        f'<p class="muted">{record.get("duration_s", 0):.2f} s · '
        f"{record.get('source_sample_rate')} Hz source, {record.get('source_channels')} ch "
        f"{e(record.get('source_format'))} · {record.get('n_windows')} windows of "
        f"{record.get('window_seconds'):g} s · top (mean over windows): </p>"
        f'<p class="preds">{tops}</p>'
    )
    toolbar = (
        f'<div class="toolbar">{audio}'
        '<button id="zoom-in" title="zoom in (or the mouse wheel)">zoom +</button>'
        '<button id="zoom-out" title="zoom out">zoom −</button>'
        '<button id="fit">fit</button>'
        '<button id="left" title="pan left (drag)">◀</button>'
        '<button id="right" title="pan right">▶</button>'
        '<label><input type="checkbox" id="follow" checked> follow playhead</label>'
        '<span class="readout" id="readout"></span></div>'
    )
    viewer = (
        '<div class="viewer" id="viewer">'
        + axis
        + '<div class="viewport" id="viewport"><div class="tiles" id="tiles"></div>'
        + '<svg class="marks" id="marks"></svg><div class="playhead" id="playhead"></div></div>'
        + '<div></div><svg class="taxis" id="taxis" height="38"></svg>'
        + "</div>"
    )
    script = f'<script type="application/json" id="rec-data">{dumps(view)}</script>'
    if not images:  # a run with neither image (--outputs): the predictions and the audio
        toolbar, viewer, bars, script = f'<div class="toolbar">{audio}</div>', "", "", ""
    body = (
        head
        + meta
        + f'<p class="links">{links}</p>'
        + toolbar
        + viewer
        + bars
        + "<h2>Per-window predictions</h2>"
        + _windows_table(record)
        + script
    )
    return page(data, title=source_key, body=body, here="")


def _tile_query(record: dict, name: str) -> dict[str, str]:
    """What ``/tile`` needs besides z and i: the PNG's key, or (tiled) the record and image."""
    if isinstance(image_ref(record, name), Tiled):
        return {"rec": record["source_key"], "image": name}
    return {"key": record["outputs"][name]}


def _band_names(record: dict, bands: int) -> list[str]:
    """Each overlay band's label: its class where every window explains the same one there."""
    ordinal = ["1st", "2nd", "3rd"]
    names = []
    for c in range(bands):
        seen = {
            w["explained"][c]["class_name"]
            for w in record.get("windows") or []
            if c < len(w.get("explained", []))
        }
        names.append(
            seen.pop() if len(seen) == 1 else f"{ordinal[c] if c < 3 else f'{c + 1}th'} class"
        )
    return names


def _freq_axis(mel: MelAxis, n: int, *, names: list[str]) -> str:
    """The frequency axis (Hz at the mel rows) of each ``n``-row band named in ``names`` (SVG)."""
    height = len(names) * n
    ticks = mel.ticks()
    parts = [f'<svg class="faxis" id="faxis" width="{GUTTER}" height="{height}">']
    labels = names
    for b in range(len(names)):
        top = b * n
        for t in ticks:
            y = top + t["y"]
            parts.append(
                f'<line x1="{GUTTER - 6}" x2="{GUTTER}" y1="{y:.1f}" y2="{y:.1f}"></line>'
                f'<text class="tick" x="{GUTTER - 8}" y="{y + 4:.1f}" text-anchor="end">'
                f"{t['hz']}</text>"
            )
        mid = top + n / 2
        label = labels[b] if len(labels[b]) <= 34 else labels[b][:33] + "…"
        parts.append(
            f'<text class="title" transform="translate(12 {mid:.0f}) rotate(-90)" '
            f'text-anchor="middle">frequency (Hz)</text>'
            f'<text class="band-name" transform="translate(26 {mid:.0f}) rotate(-90)" '
            f'text-anchor="middle">{e(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _call_text(c: dict) -> str:
    """The call box of an explained class, for the windows table ('' where there is none)."""
    if c.get("call_begin_s") is None:
        return ""
    return (
        f"; call {c['call_begin_s']:.2f}–{c['call_end_s']:.2f} s, "
        f"{c['call_low_hz']:.0f}–{c['call_high_hz']:.0f} Hz"
    )


def _windows_table(record: dict) -> str:
    length = record.get("window_seconds") or 0
    rows = []
    for j, w in enumerate(record.get("windows") or []):
        preds = " ".join(
            f"<span>{e(p['class_name'])} <b>{p['probability']:.3f}</b></span>"
            for p in w.get("predictions", [])
        )
        boxes = " ".join(
            f"<span>{e(c['class_name'])}: {c['box_begin_s']:.2f}–{c['box_end_s']:.2f} s, "
            f"{c['box_low_hz']:.0f}–{c['box_high_hz']:.0f} Hz{_call_text(c)}</span>"
            for c in w.get("explained", [])
            if "box_begin_s" in c
        )
        rows.append(
            f'<tr data-t="{w["start_s"]}"><td class="num">{j + 1}</td>'
            f'<td class="num">{w["start_s"]:.2f}–{w["start_s"] + length:.2f}</td>'
            f'<td class="preds">{preds}</td><td class="preds">{boxes}</td></tr>'
        )
    return (
        '<div class="windows"><table id="windows"><tr><th>#</th><th>time (s)</th>'
        "<th>top predictions</th><th>evidence boxes and call boxes (explained classes)</th></tr>"
        + "".join(rows)
        + "</table></div>"
    )


def _int(raw: str | None, default: int) -> int:
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default
