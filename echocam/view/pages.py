"""The viewer's HTML pages: server-rendered from the Jinja2 templates in ``templates/``.

This module gathers each page's values; the templates hold the markup, and autoescaping
(:mod:`echocam.view.templating`) escapes every value that reaches it. The recording page hands
its data to ``static/view.js`` in a ``<script type="application/json">`` block (the
Content-Security-Policy allows no inline script).
"""

from __future__ import annotations

import math
from typing import Any

from echocam.view.axes import MelAxis, TimeAxis
from echocam.view.data import DETECTION_SORTS, SORTS, Filters, RunData, audio_type
from echocam.view.images import TILE, Tiled, image_ref, zoom_levels
from echocam.view.templating import render

PAGE_SIZE = 48
DETECTIONS_PAGE_SIZE = 50
FAILED_PAGE_SIZE = 100
GUTTER = 86  # px: the frequency axis column
GALLERY_SORTS = {
    "key": "source key",
    "probability": "probability, highest first",
    "probability_asc": "probability, lowest first",
    "duration": "duration, longest first",
    "finished": "finished, latest first",
}
FILE_NOTES = {  # the outputs a recording page links to, in this order
    "spectrogram": "",
    "overlay": "",
    "cam": "",
    "selections": " (Raven)",
    "labels": " (Audacity)",
}


def page(data: RunData, template: str, *, title: str, here: str = "", **context: Any) -> bytes:
    """``template`` (a child of ``layout.html``) rendered with the run's header."""
    run = data.run()
    html = render(
        template,
        title=title,
        here=here,
        run_id=(run.get("run_id") or "")[:12],
        run_input=run.get("input"),
        store_uri=data.store.uri,
        failed=(data.summary().get("by_status") or {}).get("failed"),
        **context,
    )
    return html.encode("utf-8")


def gallery(data: RunData, query: dict[str, str]) -> bytes:
    filters = Filters.parse(query)
    sort = query.get("sort", "key")
    offset = _int(query.get("offset"), 0)
    total, rows = data.recordings(filters, sort=sort, offset=offset, limit=PAGE_SIZE)
    params = data.params()
    sps = (params.get("sample_rate") or 22050) / (params.get("hop_length") or 200)
    return page(
        data,
        "gallery.html",
        title="Recordings",
        here="/",
        filters=filters,
        sort=sort,
        sorts=[(k, label) for k, label in GALLERY_SORTS.items() if k in SORTS],
        classes=data.classes(),
        counts=data.counts(),
        total=total,
        rows=rows,
        cols=min(math.ceil(30 * sps), 10**7),  # a thumbnail shows the first 30 s
        offset=offset,
        limit=PAGE_SIZE,
        keep=_keep(query),
        has_manifest=data.table("manifest.parquet") is not None,
    )


def detections(data: RunData, query: dict[str, str]) -> bytes:
    filters = Filters.parse(query)
    sort = query.get("sort", "probability")
    offset = _int(query.get("offset"), 0)
    total, rows = data.detections(filters, sort=sort, offset=offset, limit=DETECTIONS_PAGE_SIZE)
    return page(
        data,
        "detections.html",
        title="Detections",
        here="/detections",
        filters=filters,
        sort=sort,
        sorts=[(k, k) for k in DETECTION_SORTS],
        classes=data.detection_classes(),
        total=total,
        rows=rows,
        offset=offset,
        limit=DETECTIONS_PAGE_SIZE,
        keep=_keep(query),
        similar=data.has_embeddings(),
    )


SIMILAR_TOP = 24


def similar(data: RunData, query: dict[str, str], *, reviewing: bool = False) -> bytes | None:
    """The detections of the run most like one (``key``, window start ``t``, ``class``), or
    like a box drawn on a recording (``like=KEY@T0-T1@F0-F1``, embedded with the run's model):
    "more like this" (``echocam.search``); None when there is no such detection or box.
    ``reviewing``: the viewer is in review mode (a link judges them on the ``similar`` queue)."""
    from echocam.bucket.detections import detection_id
    from echocam.errors import InvalidParams
    from echocam.search import Box, run_batches, scan, stored_vector

    top = min(max(_int(query.get("n"), SIMILAR_TOP), 1), 200)
    drawn = None
    try:
        if query.get("like"):
            from echocam.api import embed_box

            drawn = Box.parse(query["like"])
            if data.record(drawn.source_key) is None:  # only recordings of this run
                return None
            vector = embed_box(data.run(), query["like"], input_store=data.input_store())
            exclude = []
            key, t, name = drawn.source_key, drawn.begin_s, ""
        else:
            key, name = query.get("key", ""), query.get("class", "")
            t = float(query.get("t", "nan"))
            vector, window = stored_vector([data.store], key, t, name)
            exclude = [(key, window)]
    except (ValueError, InvalidParams, FileNotFoundError):
        return None
    found = scan(run_batches(data.store), vector, top=top, exclude=exclude)
    rows = found.to_pylist() if found.num_rows else []
    what = f"the box {query['like']}" if drawn else f"{name} at {key} {t:g} s"
    return page(
        data,
        "similar.html",
        title=f"More like {what}",
        query={"key": key, "t": t, "class": name},
        drawn=drawn,
        query_crop=None if drawn else {"key": key, "t": t, "class_id": _class_id(data, name)},
        rows=rows,
        top=top,
        review_query=(
            {"strategy": "similar", "like": detection_id(key, t, name)}
            if reviewing and not drawn
            else None
        ),
    )


def _class_id(data: RunData, name: str) -> int:
    names = data.run().get("class_names") or []
    return names.index(name) if name in names else 0


def review(data: RunData, state: Any, query: dict[str, str]) -> bytes:
    """The review page (``echocam view --review NAME``): the queue's filters; the item, keys,
    player and verdicts are ``static/review.js``'s, over the JSON API."""
    from echocam.view.review import STRATEGIES

    names = data.run().get("class_names") or []
    keep = {k: query.get(k, "") for k in ("class", "strategy", "min_probability",
                                          "max_probability", "like")}  # fmt: skip
    keep["strategy"] = keep["strategy"] if keep["strategy"] in STRATEGIES else "top"
    return page(
        data,
        "review.html",
        title="Review",
        here="/review",
        reviewer=state.reviewer,
        classes=names,
        strategies=STRATEGIES,
        query=keep,
        config={
            "query": {k: v for k, v in keep.items() if v},
            "classes": names,
            "run_id": data.run().get("run_id") or "",
            "reviewer": state.reviewer,
        },
    )


def failed(data: RunData, query: dict[str, str]) -> bytes:
    code = query.get("code", "")
    offset = _int(query.get("offset"), 0)
    total, rows = data.failed(code, offset=offset, limit=FAILED_PAGE_SIZE)
    return page(
        data,
        "failed.html",
        title="Failed",
        here="/failed",
        heading=f"Failed recordings{f': {code}' if code else ''}",
        code=code,
        codes=data.counts()["code"],
        total=total,
        rows=rows,
        offset=offset,
        limit=FAILED_PAGE_SIZE,
    )


def recording(data: RunData, source_key: str) -> bytes | None:
    record = data.record(source_key)
    if record is None:
        return None
    outputs = record.get("outputs") or {}
    context: dict[str, Any] = {
        "record": record,
        "has_audio": audio_type(source_key) is not None,
        "links": [(outputs[name], note) for name, note in FILE_NOTES.items() if outputs.get(name)],
        "view": None,
    }
    if record.get("status") == "ok":
        context |= _viewer(record, data.params())
    return page(data, "recording.html", title=source_key, **context)


def _viewer(record: dict, params: dict) -> dict[str, Any]:
    """The recording page's zoomable images: the data for ``view.js`` and the axes' labels."""
    outputs = record.get("outputs") or {}
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
    if not images:  # a run with neither image (--outputs): the predictions and the audio
        return {"view": None}
    for im in images:
        im["zmax"] = zoom_levels(width)
    has_overlay = images[-1]["key"] == outputs.get("overlay")
    bands = images[-1]["height"] // n if has_overlay else 0
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
        "windows": [_window(w, mel) for w in record.get("windows") or []],
        # a box drawn on the spectrogram (shift + drag) is searched for: the Hz of each row's
        # centre, top row first, turn its rows into a band
        "key": record["source_key"],
        "row_hz": [round(mel.centre_hz(n - 1 - r), 1) for r in range(n)],
        "search": bool(outputs.get("embeddings")),
    }
    return {
        "view": view,
        "has_overlay": has_overlay,
        "gutter": GUTTER,
        "n": n,
        "ticks": mel.ticks(),
        "band_names": (["spectrogram"] if outputs.get("spectrogram") else [])
        + _band_names(record, bands),
        "top_db": params.get("top_db", 80),
        "alpha": params.get("alpha", 0.5),
    }


def _window(w: dict, mel: MelAxis) -> dict[str, Any]:
    """One window for ``view.js``: its start and each explained class's boxes in mel rows."""
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
    return {"t": w["start_s"], "explained": explained}


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


def _keep(query: dict[str, str]) -> dict[str, str]:
    """The query a pager's links carry on: every filter and the sort, not the offset."""
    return {k: v for k, v in query.items() if k != "offset" and v}


def _int(raw: str | None, default: int) -> int:
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default
