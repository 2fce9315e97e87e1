"""`echocam view` and `echocam report` over a real run: HTTP checks, hostile paths, ranges, a
million-row manifest, and pages driven in a real headless Chromium (Debian's, `make browser`).

Screenshots are kept under the session's pytest temporary directory (path printed: `pytest -s`).
"""

from __future__ import annotations

import base64
import html.parser
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from devtools.services import free_port, wait_for
from echocam.view.axes import MelAxis
from echocam.view.images import TILE, Images, zoom_levels
from echocam.view.server import make_server, parse_range, start_in_thread
from tests.helpers import ROOT, SPECIES, chirp, marks, wav_bytes

SAMPLES = sorted((ROOT / "samples").glob("*.wav"))
BAD = {"bad/empty.wav": (b"", "empty"), "bad/text.wav": (b"not audio\n" * 30, "undecodable")}
UNICODE_KEY = "site 1/ñandú #1 & <b>.wav"  # quoting and escaping on every route
SECRET = "TOPSECRET-outside-the-run"


# ---------------------------------------------------------------------------------------------
# a real run, a server over it, a browser


def echocam(*args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echocam_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, species_checkpoint) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("view-in")
    for p in SAMPLES:
        shutil.copy(p, src / p.name)
    (src / UNICODE_KEY).parent.mkdir(parents=True)
    shutil.copy(SAMPLES[0], src / UNICODE_KEY)
    for key, (data, _) in BAD.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    out = tmp_path_factory.mktemp("view-out")
    proc = echocam(
        "run", str(src), "--out", str(out), "--weights", str(species_checkpoint),
        "--top-k", "2", "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return src, out


def manifest_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def served(run_dir):
    """`echocam view OUT` as a user starts it (a subprocess), on a free port."""
    _, out = run_dir
    port = free_port()
    log = open(out.parent / "view-server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "echocam_cli", "view", str(out), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (out.parent / "view-server.log").read_text()
        try:
            return get(url, "/")[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, what="echocam view")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def server(run_dir):
    """The viewer in this process, on a free port (for the HTTP-level checks)."""
    srv = make_server(str(run_dir[1]), port=0, quiet=True)
    start_in_thread(srv)
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def get(base: str, target: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) of a raw request: ``target`` is sent exactly as given."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_host="Host" in (headers or {}))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("view-screenshots")
    print(f"\nviewer screenshots: {path}")
    return path


@pytest.fixture(scope="module")
@marks("browser")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("Chromium or chromedriver missing: `make browser` installs Debian's")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=options)  # no Selenium Manager
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()


def console_errors(driver) -> list[dict]:
    return [m for m in driver.get_log("browser") if m["level"] in ("SEVERE", "ERROR")]


def responses(driver) -> list[dict]:
    """Network.responseReceived events since the last call (Chrome's performance log)."""
    out = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.responseReceived":
            out.append(msg["params"]["response"])
    return out


def shoot(driver, path: Path) -> Path:
    """A full-page screenshot (the window grown to the page's height), kept as an artifact."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 20, 600), 4000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    print(f"screenshot: {path}")
    return path


def loaded(driver, selector: str) -> bool:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        selector,
    )


def wait(predicate, timeout=30.0, what="condition"):
    wait_for(predicate, timeout=timeout, what=what, interval=0.1)


def rec_url(base: str, key: str) -> str:
    return f"{base}/rec?{urllib.parse.urlencode({'key': key})}"


# ---------------------------------------------------------------------------------------------
# in the browser


def test_gallery_one_card_per_recording_no_console_errors(run_dir, served, browser, screenshots):
    rows = manifest_rows(run_dir[1])
    browser.get_log("browser")
    browser.get(served + "/")
    cards = browser.find_elements("css selector", "#gallery .card")
    assert len(cards) == len(rows) == len(SAMPLES) + 1 + len(BAD)
    keys = {c.find_element("css selector", ".key").text for c in cards}
    assert keys == {r["source_key"] for r in rows}
    wait(lambda: loaded(browser, "#gallery img"), what="thumbnails")
    assert len(browser.find_elements("css selector", "#gallery img")) == len(rows) - len(BAD)
    shoot(browser, screenshots / "gallery.png")
    assert console_errors(browser) == []


def test_a_filter_changes_what_is_shown(run_dir, served, browser):
    from selenium.webdriver.support.ui import Select

    rows = manifest_rows(run_dir[1])
    browser.get(served + "/")
    Select(browser.find_element("name", "status")).select_by_value("failed")
    browser.find_element("id", "apply").click()
    wait(lambda: "status=failed" in browser.current_url, what="the filtered page")
    cards = browser.find_elements("css selector", "#gallery .card")
    assert {c.get_attribute("data-status") for c in cards} == {"failed"}
    assert len(cards) == len(BAD)
    texts = " ".join(c.text for c in cards)
    assert all(code in texts for _, code in BAD.values())

    # the top class and a probability range, over the ok recordings
    ok = [r for r in rows if r["status"] == "ok"]
    klass = ok[0]["top_class_name"]
    of_class = sorted(r["top_probability"] for r in ok if r["top_class_name"] == klass)
    lo = of_class[len(of_class) // 2]
    browser.get(served + "/?" + urllib.parse.urlencode({"class": klass, "pmin": lo}))
    want = {
        r["source_key"] for r in ok if r["top_class_name"] == klass and r["top_probability"] >= lo
    }
    shown = {c.text for c in browser.find_elements("css selector", "#gallery .card .key")}
    assert shown == want and 0 < len(shown) < len(rows)
    assert console_errors(browser) == []


def test_recording_page_axes_labels_boxes_colour_bars(run_dir, served, browser, screenshots):
    _, out = run_dir
    key = SAMPLES[-1].name  # spinetail: 19.5 s, wider than one tile
    record = json.loads((out / key / "record.json").read_text())
    browser.get_log("browser")
    browser.get(rec_url(served, key))
    wait(lambda: loaded(browser, "img.tile") and loaded(browser, ".colourbar img"), what="tiles")
    taxis = [t.text for t in browser.find_elements("css selector", "#taxis text")]
    faxis = [t.text for t in browser.find_elements("css selector", "#faxis text")]
    assert "time (s)" in taxis
    ticks = [float(t) for t in taxis if re.fullmatch(r"[0-9.]+", t)]
    assert len(ticks) >= 3 and max(ticks) <= record["duration_s"] + 1e-6
    assert faxis.count("frequency (Hz)") == 1 + 2  # the spectrogram and each class band
    assert {"500", "1000", "2000", "4000", "8000"} <= set(faxis)
    # each band of each window labelled with its class and probability; its box drawn
    labels = [t.text for t in browser.find_elements("css selector", "#marks text.label")]
    for w in record["windows"]:
        for c in w["explained"]:
            assert f"{c['class_name']} {c['probability']:.3f}" in labels
    boxes = browser.find_elements("css selector", "#marks rect.box")
    assert len(boxes) == sum(len(w["explained"]) for w in record["windows"])
    # and the call box inside it, where one was found (dashed white)
    calls = browser.find_elements("css selector", "#marks rect.call")
    found = [c for w in record["windows"] for c in w["explained"] if c["call_begin_s"] is not None]
    assert len(found) >= 1 and len(calls) == len(found)
    names = [a.text for a in browser.find_elements("css selector", ".links a")]
    assert "record.json" in names and "cam.npz" in names
    rows = browser.find_elements("css selector", "#windows tr[data-t]")
    assert len(rows) == record["n_windows"]
    shoot(browser, screenshots / "recording.png")
    assert console_errors(browser) == []


def test_more_like_this_from_a_box_lists_the_search_s_results(
    run_dir, served, browser, screenshots
):
    """The button beside a recording's box opens the run's detections most like it, as
    ``echocam search`` ranks them, each with its crop, sound and a link to its recording."""
    _, out = run_dir
    key = SAMPLES[-1].name
    record = json.loads((out / key / "record.json").read_text())
    window, c = record["windows"][1], record["windows"][1]["explained"][0]
    browser.get_log("browser")
    browser.get(rec_url(served, key))
    wait(lambda: browser.find_elements("css selector", "#windows a.more"), what="buttons")
    buttons = browser.find_elements("css selector", "#windows a.more")
    assert len(buttons) == sum(len(w["explained"]) for w in record["windows"])
    query = {"key": key, "t": window["start_s"], "class": c["class_name"]}
    want = f"/similar?{urllib.parse.urlencode(query)}"
    button = next(b for b in buttons if b.get_attribute("href").endswith(want))
    button.click()
    wait(lambda: browser.find_elements("css selector", "#similar tr.det"), what="results")
    wait(lambda: loaded(browser, "#similar img") and loaded(browser, "#query"), what="crops")
    rows = browser.find_elements("css selector", "#similar tr.det")
    shown = [float(r.find_element("css selector", ".sim").text) for r in rows]
    proc = echocam("search", str(out), "--like-detection",
                   f"{key}@{window['start_s']!r}#{c['class_name']}", "--top", "24")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = [float(line.split(",")[0]) for line in proc.stdout.splitlines()[1:]]
    assert shown == [round(x, 3) for x in expected] and len(shown) >= 3
    assert shown == sorted(shown, reverse=True)
    assert len(browser.find_elements("css selector", "#similar audio")) == len(rows)
    shoot(browser, screenshots / "similar.png")
    # each result's own button searches again from it
    rows[0].find_element("css selector", "a.more").click()
    wait(lambda: "/similar?" in browser.current_url and browser.find_elements(
        "css selector", "#similar tr.det"), what="a second search")  # fmt: skip
    assert console_errors(browser) == []


def test_a_box_drawn_with_the_mouse_is_searched_for(run_dir, served, browser, screenshots):
    """Shift + drag on a recording's spectrogram draws a box; its link lists the run's
    detections most like it, as ``echocam search --like`` ranks them."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.keys import Keys

    _, out = run_dir
    key = SAMPLES[-1].name
    browser.get_log("browser")
    browser.get(rec_url(served, key))
    wait(lambda: loaded(browser, "img.tile"), what="tiles")
    link = browser.find_element("css selector", "#drawn")
    assert not link.is_displayed()
    # from the viewport's top left, in the window's coordinates (Selenium's element offsets are
    # from the centre of its visible part, which moves with the page's height)
    left, top, w = browser.execute_script(
        "const r = document.getElementById('viewport').getBoundingClientRect();"
        "return [r.left, r.top, r.width]"
    )
    drag = ActionBuilder(browser)
    drag.key_action.key_down(Keys.SHIFT)
    drag.pointer_action.move_to_location(int(left + w / 5), int(top + 20)).pointer_down()
    drag.pointer_action.move_to_location(int(left + w / 5 + w / 10), int(top + 80)).pointer_up()
    for _ in range(4):  # Shift held through the pointer's four steps (one tick each)
        drag.key_action.pause(0)
    drag.key_action.key_up(Keys.SHIFT)
    drag.perform()
    wait(lambda: link.is_displayed(), what="the drawn box's link")
    assert len(browser.find_elements("css selector", "#marks rect.drawn")) == 1
    like = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link.get_attribute("href")).query))
    like = like["like"]
    key_part, times, band = like.rsplit("@", 2)
    assert key_part == key
    t0, t1 = map(float, times.split("-"))
    f0, f1 = map(float, band.split("-"))
    assert 0 <= t0 < t1 and 0 < f0 < f1  # pan state: the box is where the drag was, in s and Hz
    link.click()
    wait(lambda: browser.find_elements("css selector", "#similar tr.det"), what="results")
    assert browser.find_element("css selector", "#drawn-query").is_displayed()
    shown = [float(r.find_element("css selector", ".sim").text)
             for r in browser.find_elements("css selector", "#similar tr.det")]  # fmt: skip
    proc = echocam("search", str(out), "--like", like, "--top", "24")
    assert proc.returncode == 0, proc.stderr
    expected = [float(line.split(",")[0]) for line in proc.stdout.splitlines()[1:]]
    assert shown == [round(x, 3) for x in expected] and len(shown) >= 3
    shoot(browser, screenshots / "similar-drawn.png")
    assert console_errors(browser) == []


def test_zoom_and_pan_show_less_time_with_tiles(run_dir, served, browser):
    key = SAMPLES[-1].name
    browser.get(rec_url(served, key))
    wait(lambda: loaded(browser, "img.tile"), what="tiles")
    width = json.loads(browser.find_element("id", "rec-data").get_attribute("textContent"))["width"]
    assert len(browser.find_elements("css selector", "img.tile")) == 2 * -(-width // TILE)

    def ticks():
        texts = [t.text for t in browser.find_elements("css selector", "#taxis text.tick")]
        return [float(t) for t in texts]

    before = ticks()
    for _ in range(3):
        browser.find_element("id", "zoom-in").click()
    zoomed = ticks()
    assert max(zoomed) - min(zoomed) < (max(before) - min(before)) / 4
    browser.find_element("id", "right").click()
    assert min(ticks()) > min(zoomed)
    assert loaded(browser, "img.tile")
    assert console_errors(browser) == []


def test_audio_plays_the_source_through_range_requests(run_dir, served, browser):
    key = SAMPLES[-1].name
    browser.get(rec_url(served, key))
    responses(browser)  # drop the page's own
    browser.execute_script("document.getElementById('audio').play()")
    wait(
        lambda: browser.execute_script("return document.getElementById('audio').currentTime") > 0.5,
        what="playback",
    )
    state = browser.execute_script(
        "const a = document.getElementById('audio');"
        "return {error: a.error && a.error.code, ready: a.readyState, "
        "duration: a.duration, playhead: document.getElementById('playhead').style.left}"
    )
    assert state["error"] is None and state["ready"] >= 2
    assert abs(state["duration"] - 19.5) < 0.1
    assert float(state["playhead"].removesuffix("px")) > 0  # it moved off the start
    audio = [r for r in responses(browser) if "/audio?" in r["url"]]
    assert audio and {r["status"] for r in audio} == {206}, audio
    assert console_errors(browser) == []


def test_failed_page_lists_codes_with_messages(run_dir, served, browser, screenshots):
    _, out = run_dir
    browser.get(served + "/failed")
    rows = browser.find_elements("css selector", "#failed tr")[1:]
    assert len(rows) == len(BAD)
    for key, (_, code) in BAD.items():
        message = json.loads((out / key / "record.json").read_text())["error_message"]
        row = next(r for r in rows if key in r.text)
        assert code in row.text and message in row.text
    shoot(browser, screenshots / "failed.png")
    browser.get(served + "/detections")
    wait(lambda: loaded(browser, "tr.det img"), what="detection crops")
    assert len(browser.find_elements("css selector", "tr.det")) > 0
    shoot(browser, screenshots / "detections.png")
    assert console_errors(browser) == []


def test_report_is_self_contained_and_opens_without_a_server(run_dir, browser, screenshots):
    _, out = run_dir
    proc = echocam("report", str(out))
    assert proc.returncode == 0, proc.stderr
    html = (out / "report.html").read_text()
    # nothing to fetch: every src is a data URI, every href a fragment
    srcs = re.findall(r'\ssrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(h.startswith("#") for h in re.findall(r'\shref="([^"]*)"', html))
    assert "<script" not in html and "<link" not in html
    for s in srcs:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    rows = manifest_rows(out)
    for _, code in BAD.values():
        assert f"<code>{code}</code>" in html
    for r in rows:
        if r["status"] == "failed":
            assert r["error_message"] in html
    assert all(r["top_class_name"] in html for r in rows if r["status"] == "ok")
    browser.get_log("browser")
    browser.get((out / "report.html").as_uri())
    assert browser.execute_script("return document.images.length") == len(srcs)
    assert loaded(browser, "img")
    shoot(browser, screenshots / "report.png")
    assert console_errors(browser) == []


# ---------------------------------------------------------------------------------------------
# over HTTP


def test_pages_escape_and_quote_odd_keys(run_dir, server):
    status, _, body = get(server, "/")
    assert status == 200
    assert "<b>.wav" not in body.decode() and "&lt;b&gt;.wav" in body.decode()
    status, _, body = get(server, "/rec?" + urllib.parse.urlencode({"key": UNICODE_KEY}))
    assert status == 200 and "&lt;b&gt;" in body.decode()
    record = json.loads(body.decode().split('id="rec-data">')[1].split("</script>")[0])
    for image in record["images"]:
        status, headers, png = get(
            server, "/tile?" + urllib.parse.urlencode({**image["query"], "z": 0, "i": 0})
        )
        assert status == 200 and headers["content-type"] == "image/png"
    status, _, data = get(server, "/audio?" + urllib.parse.urlencode({"key": UNICODE_KEY}))
    assert status == 200 and data == (run_dir[0] / UNICODE_KEY).read_bytes()


HOSTILE = "<script>alert(1)</script>\"onmouseover=alert(2) x='"  # markup, and out of an attribute
PAGE_SCRIPTS = {"/static/view.js", "application/json"}  # the only scripts a viewer page has


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> tuple[Path, str]:
    """A run whose recording keys and class names are HTML: a model shipped with hostile class
    names, over a recording (and a broken one) whose keys are hostile too; its report.html."""
    import torch
    from torchvision.models import resnet18

    from echocam.explain.model import save_checkpoint

    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(1234)
    names = [f"{HOSTILE} {s}" for s in SPECIES]
    save_checkpoint(root / "model.pt", resnet18(num_classes=len(names)).state_dict(), names)
    key = f"{HOSTILE}.wav"  # its "/" makes a folder: the key is still the whole string
    (root / "in" / key).parent.mkdir(parents=True)
    shutil.copy(SAMPLES[0], root / "in" / key)
    (root / "in" / "bad" / key).parent.mkdir(parents=True)
    (root / "in" / "bad" / key).write_bytes(b"not audio\n" * 30)
    proc = echocam(
        "run", str(root / "in"), "--out", str(root / "out"), "--weights", str(root / "model.pt"),
        "--top-k", "2", "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = echocam("report", str(root / "out"))
    assert proc.returncode == 0, proc.stderr
    return root / "out", key


class Markup(html.parser.HTMLParser):
    """What a browser makes of a page: its elements' attributes, script tags and text."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.attrs: list[tuple[str, str | None]] = []
        self.scripts: list[str] = []
        self.text = ""
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.attrs += attrs
        if tag == "script":
            found = dict(attrs)
            self.scripts.append(found.get("src") or found.get("type") or "inline")

    def handle_data(self, data):
        self.text += data


def hostile_pages(base: str, key: str) -> dict[str, str]:
    q = urllib.parse.urlencode
    return {
        "gallery": f"{base}/",
        "recording": f"{base}/rec?{q({'key': key})}",
        "detections": f"{base}/detections",
        "failed": f"{base}/failed",
    }


def test_hostile_keys_and_class_names_come_out_escaped(hostile_run):
    out, key = hostile_run
    srv = make_server(str(out), port=0, quiet=True)
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        pages = {}
        for name, url in hostile_pages(base, key).items():
            status, _, body = get(base, url.removeprefix(base))
            assert status == 200, name
            pages[name] = body.decode()
    finally:
        srv.shutdown()
        srv.server_close()
    pages["report.html"] = (out / "report.html").read_text()
    for name, page in pages.items():
        assert "<script>alert" not in page and HOSTILE not in page, name
        # the recording page's data block: JSON with no "<" (it cannot close its script element)
        data = re.findall(r'<script type="application/json" id="rec-data">(.*?)</script>', page)
        assert all("<" not in d for d in data), name
        if data:  # and the names in it as they were
            view = json.loads(data[0])
            labels = {c["name"] for w in view["windows"] for c in w["explained"]}
            assert labels and all(label.startswith(HOSTILE) for label in labels)
        doc = Markup(page)
        assert not any(a.startswith("on") for a, _ in doc.attrs), name  # no handler got out
        allowed = PAGE_SCRIPTS if name != "report.html" else set()
        assert set(doc.scripts) <= allowed, (name, doc.scripts)
        assert HOSTILE in doc.text, name  # shown, as text
    # the class name where each page shows it, the key where it links or describes it
    assert f"{HOSTILE} " in Markup(pages["gallery"]).text
    assert any(v and HOSTILE in v for _, v in Markup(pages["gallery"]).attrs)  # alt, escaped


def test_hostile_names_run_no_script_in_the_browser(hostile_run, browser):
    """The pages and report.html in Chromium: no alert, no handler attribute, no console error
    (a viewer page's CSP reports an inline script it blocked as one)."""
    out, key = hostile_run
    srv = make_server(str(out), port=0, quiet=True)
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    spy = browser.execute_cdp_cmd(  # alert() recorded instead of opening a dialog
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));"},
    )
    try:
        urls = {**hostile_pages(base, key), "report.html": (out / "report.html").as_uri()}
        for name, url in urls.items():
            browser.get_log("browser")
            browser.get(url)
            seen = browser.execute_script(
                "return {alerts: window.__alerts,"
                " handlers: document.querySelectorAll('[onmouseover]').length,"
                " scripts: [...document.scripts].map(s => s.getAttribute('src') || s.type),"
                " text: document.body.textContent}"
            )
            assert seen["alerts"] == [] and seen["handlers"] == 0, (name, seen)
            allowed = PAGE_SCRIPTS if name != "report.html" else set()
            assert set(seen["scripts"]) <= allowed, (name, seen["scripts"])
            assert HOSTILE in seen["text"], name
            assert console_errors(browser) == [], name
    finally:
        browser.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": spy["identifier"]}
        )
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize(
    ("outputs", "images"),
    [("spectrogram,cam", ["spectrogram.png"]), ("overlay", ["overlay.webp"]), ("cam", [])],
)
def test_a_run_with_fewer_outputs_still_shows_what_it_has(
    tmp_path, species_checkpoint, outputs, images
):
    """--outputs without the overlay (or any image): the gallery's thumbnail, the recording's
    tiles and the detections' crops come from the images the record lists, or none."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES[0], src / SAMPLES[0].name)
    proc = echocam(
        "run", str(src), "--out", str(out), "--weights", str(species_checkpoint),
        "--threads", "2", "--outputs", outputs, "--overlay-format", "webp",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    key = SAMPLES[0].name
    record = json.loads((out / key / "record.json").read_text())
    assert sorted(p.name for p in (out / key).iterdir()) == sorted(
        ["record.json", *images, *(["cam.npz"] if "cam" in outputs else [])]
    )
    srv = make_server(str(out), port=0, quiet=True)
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        status, _, body = get(base, "/")
        assert status == 200
        thumbs = re.findall(r'src="(/thumb\?[^"]+)"', body.decode())
        assert len(thumbs) == len(images[:1])
        for t in thumbs:
            assert get(base, t.replace("&amp;", "&"))[0] == 200
        status, _, body = get(base, "/rec?" + urllib.parse.urlencode({"key": key}))
        assert status == 200
        page = body.decode()
        if images:
            view = json.loads(page.split('id="rec-data">')[1].split("</script>")[0])
            assert [im["key"].rsplit("/", 1)[-1] for im in view["images"]] == images
            for im in view["images"]:
                q = urllib.parse.urlencode({"key": im["key"], "z": 0, "i": 0})
                status, headers, tile = get(base, "/tile?" + q)
                assert status == 200 and Image.open(io.BytesIO(tile)).size[1] == im["height"]
        else:
            assert 'id="rec-data"' not in page and "Per-window predictions" in page
        c = record["windows"][0]["explained"][0]
        q = urllib.parse.urlencode({"key": key, "t": 0.0, "class_id": c["class_id"]})
        assert get(base, "/crop?" + q)[0] == (200 if images else 404)
    finally:
        srv.shutdown()
        srv.server_close()


def test_range_requests_answer_206_with_the_right_bytes(run_dir, server):
    src, _ = run_dir
    key = SAMPLES[-1].name
    data = (src / key).read_bytes()
    target = "/audio?" + urllib.parse.urlencode({"key": key})
    size = len(data)
    cases = {
        "bytes=0-99": (0, 100),
        "bytes=1000-": (1000, size),
        "bytes=-500": (size - 500, size),
        f"bytes=100-{size + 999}": (100, size),
    }
    for header, (start, stop) in cases.items():
        status, headers, body = get(server, target, {"Range": header})
        assert status == 206, header
        assert headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
        assert body == data[start:stop] and int(headers["content-length"]) == stop - start
    status, headers, body = get(server, target)
    assert status == 200 and body == data and headers["accept-ranges"] == "bytes"
    status, headers, _ = get(server, target, {"Range": f"bytes={size}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    status, headers, body = get(server, target, {"Range": "bytes=0-9"}, method="HEAD")
    assert status == 206 and body == b"" and headers["content-length"] == "10"


def test_parse_range():
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=5-", 10) == (5, 10)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=-30", 10) == (0, 10)
    assert parse_range("bytes=10-", 10) == "unsatisfiable"
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=5-2", 10) is None  # invalid: the whole object
    assert parse_range("bytes=0-1,5-6", 10) is None  # several ranges: the whole object
    assert parse_range("items=0-1", 10) is None


def test_hostile_paths_never_leave_the_run(run_dir, server, tmp_path):
    src, out = run_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"s": SECRET}))
    (outside / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + SECRET.encode())
    (outside / "secret.wav").write_bytes(SECRET.encode() * 10)
    links = {
        out / "leak.json": outside / "secret.json",
        out / "leakdir": outside,
        src / "leak.wav": outside / "secret.wav",
    }
    for link, target in links.items():
        link.symlink_to(target)
    # a record planted for the symlinked source: its audio must still not be served
    (out / "leak.wav").mkdir()
    (out / "leak.wav" / "record.json").write_text(
        json.dumps({"source_key": "leak.wav", "status": "failed", "record_key": "x"})
    )
    (src / "unlisted.wav").write_bytes(wav_bytes(chirp(1.0, 22050), 22050))  # not in the run
    rel = os.path.relpath(outside, out)
    hostile = [
        f"/file/{rel}/secret.json",
        f"/file/../{outside.name}/secret.json",
        "/file/%2e%2e/%2e%2e/etc/passwd",
        "/file/%2E%2E%2Foutside%2Fsecret.json",
        f"/file/..%2f{rel}%2fsecret.json",
        f"/file/%2F{str(outside / 'secret.json').lstrip('/')}",
        f"/file/{outside / 'secret.json'}",
        f"//{outside / 'secret.json'}",
        f"/file/..%5C..%5C{outside.name}%5Csecret.json",
        f"/file/..\\..\\{outside.name}\\secret.json",
        "/file/leak.json",
        "/file/leakdir/secret.json",
        "/file/run.json%00.png",
        "/file/%252e%252e/secret.json",
        "/static/../data.py",
        "/static/%2e%2e/server.py",
        "/tile?" + urllib.parse.urlencode({"key": "leakdir/secret.png", "z": 0, "i": 0}),
        "/tile?" + urllib.parse.urlencode({"key": f"../{rel}/secret.png", "z": 0, "i": 0}),
        "/thumb?" + urllib.parse.urlencode({"key": str(outside / "secret.png")}),
        "/rec?" + urllib.parse.urlencode({"key": f"../{rel}/secret"}),
        "/audio?" + urllib.parse.urlencode({"key": f"../{rel}/secret.wav"}),
        "/audio?" + urllib.parse.urlencode({"key": str(outside / "secret.wav")}),
        "/audio?" + urllib.parse.urlencode({"key": "leak.wav"}),
        "/audio?" + urllib.parse.urlencode({"key": "unlisted.wav"}),
        "/audio?" + urllib.parse.urlencode({"key": "..\\secret.wav"}),
    ]
    try:
        for target in hostile:
            status, _, body = get(server, target)
            assert status in (400, 403, 404), (target, status)
            assert SECRET.encode() not in body, target
        assert get(server, "/tile?key=a.png&z=x&i=0")[0] == 400
        assert get(server, "/file/run.json")[0] == 200  # the run's own files still are served
        assert get(server, "/file/" + manifest_rows(out)[0]["record_key"])[0] == 200
    finally:
        for link in links:
            link.unlink()
        shutil.rmtree(out / "leak.wav")
        (src / "unlisted.wav").unlink()


def test_the_route_table_answers_its_paths_and_404s_the_rest(server):
    for target in ("/", "/detections", "/failed", "/static/view.css", "/colourbar/magma.png"):
        status, headers, body = get(server, target)
        assert status == 200 and body, target
        status, head, body = get(server, target, method="HEAD")  # HEAD is GET without the body
        assert status == 200 and body == b"", target
        assert head["content-length"] == headers["content-length"], target
    for target in (
        "/nope",
        "/gallery",
        "/detections/",
        "/index.html",
        "/static/",
        "/static/view.css/x",
        "/static/layout.html",
        "/colourbar/jet.png",
        "/colourbar/magma",
        "/file/",
        "/rec",
        "/rec?key=",
        "/audio",
        "/tile",
    ):
        assert get(server, target)[0] == 404, target
    # GET and HEAD only, but for review mode's POST: a read-only viewer refuses every POST
    assert get(server, "/", method="POST")[0] == 403
    assert get(server, "/", method="PUT")[0] == 501


def test_only_loopback_hosts_and_with_a_token_only_its_holders(run_dir):
    srv = make_server(str(run_dir[1]), port=0, token="s3cr3t-token", quiet=True)
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert get(base, "/")[0] == 401
        assert get(base, "/file/run.json")[0] == 401
        assert get(base, "/?token=wrong")[0] == 401
        status, headers, _ = get(base, "/failed?token=s3cr3t-token&code=empty")
        assert status == 303 and headers["location"] == "/failed?code=empty"
        assert "s3cr3t-token" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
        assert get(base, "/", {"Cookie": "echocam_token=s3cr3t-token"})[0] == 200
        assert get(base, "/", {"Authorization": "Bearer s3cr3t-token"})[0] == 200
        assert get(base, "/", {"Cookie": "echocam_token=nope"})[0] == 401
        status, headers, _ = get(base, "//evil.example/?token=s3cr3t-token")
        assert status == 303 and not headers["location"].startswith("//")
        # DNS rebinding: a page on another name must not reach a loopback viewer
        cookie = {"Cookie": "echocam_token=s3cr3t-token"}
        assert get(base, "/", {"Host": f"evil.example:{srv.server_address[1]}", **cookie})[0] == 403
        assert get(base, "/", {"Host": "localhost", **cookie})[0] == 200
        status, headers, _ = get(base, "/", {"Cookie": "echocam_token=s3cr3t-token"})
        assert "script-src 'self'" in headers["content-security-policy"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_run_without_a_manifest_says_how_to_make_one(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "going", "params": {}}))
    srv = make_server(str(tmp_path), port=0, quiet=True)
    start_in_thread(srv)
    try:
        status, _, body = get(f"http://127.0.0.1:{srv.server_address[1]}", "/")
        assert status == 200 and b"echocam manifest DEST" in body
        assert b"0 recordings match" in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_million_recordings_page_fast(tmp_path):
    n = 1_000_000
    rng = np.random.default_rng(0)
    names = np.array(["Charadrius ruficapillus", "Chenonetta jubata", "Chlamydera nuchalis"])
    ok = rng.random(n) > 0.05
    prob = np.round(rng.random(n), 6)
    keys = pa.array([f"site {i % 97}/rec{i:07d}.wav" for i in range(n)])
    cls = names[rng.integers(0, 3, n)]
    columns = {
        "source_key": keys,
        "status": pa.array(np.where(ok, "ok", "failed")),
        "error_code": pa.array(np.where(ok, None, "undecodable").tolist()),
        "error_message": pa.array(np.where(ok, None, "cannot decode audio").tolist()),
        "duration_s": pa.array(np.where(ok, 10.0, np.nan)),
        "n_windows": pa.array(np.where(ok, 2, 0)),
        "top_class_name": pa.array(np.where(ok, cls, None).tolist()),
        "top_probability": pa.array(np.where(ok, prob, np.nan)),
        "overlay_key": pa.array([None] * n, pa.string()),
        "spectrogram_key": pa.array([None] * n, pa.string()),
        "record_key": pa.array([None] * n, pa.string()),
        "finished_at": pa.array(["2026-01-01T00:00:00"] * n),
    }
    pq.write_table(pa.table(columns), tmp_path / "manifest.parquet", row_group_size=100_000)
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "big", "params": {}}))
    (tmp_path / "summary.json").write_text(json.dumps({"recordings": n}))
    srv = make_server(str(tmp_path), port=0, quiet=True)
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        get(base, "/")  # facets (class and code counts) are computed once per table version
        timings = {}
        for target in (
            "/",
            "/?sort=probability",
            "/?class=Chenonetta+jubata&pmin=0.5&pmax=0.9&sort=probability&offset=100000",
            "/?status=failed&code=undecodable&offset=40000",
            "/?q=rec0999&sort=duration",
            "/failed?offset=49000",
        ):
            t0 = time.perf_counter()
            status, _, body = get(base, target)
            timings[target] = time.perf_counter() - t0
            assert status == 200, target
            assert body.count(b'class="card"') <= 48 and len(body) < 100_000
        print("million-row pages (s):", {k: round(v, 3) for k, v in timings.items()})
        assert max(timings.values()) < 5.0, timings
        body = get(base, "/?class=Chenonetta+jubata&pmin=0.5&pmax=0.9")[2].decode()
        expected = int(((cls == "Chenonetta jubata") & ok & (prob >= 0.5) & (prob <= 0.9)).sum())
        assert f"{expected} recordings match" in body
        assert body.count('class="card"') == 48
    finally:
        srv.shutdown()
        srv.server_close()


# ---------------------------------------------------------------------------------------------
# pieces


def test_mel_axis_rows_are_librosas_band_centres():
    from echocam.explain.localise import band_centres

    for n, fmin, fmax in ((260, 0.0, 13000.0), (128, 50.0, 11025.0)):
        axis = MelAxis(n, fmin, fmax)
        centres = band_centres(n_mels=n, fmin=fmin, fmax=fmax)
        assert np.allclose([axis.centre_hz(i) for i in range(n)], centres, rtol=1e-9)
        # row r (0 the top) sits at band n - 1 - r's centre
        for r in (0, 17, n // 2, n - 1):
            assert abs(axis.row(float(centres[n - 1 - r])) - r) < 1e-6
    ticks = MelAxis(260, 0.0, 13000.0).ticks()
    assert [t["hz"] for t in ticks] == [250, 500, 1000, 2000, 4000, 8000, 12000]
    assert all(
        a["y"] > b["y"] for a, b in zip(ticks, ticks[1:], strict=False)
    )  # higher Hz nearer the top


def test_tiles_cover_the_image_at_every_zoom(tmp_path):
    rng = np.random.default_rng(1)
    width = 5 * TILE + 300
    pixels = rng.integers(0, 256, (40, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    images = Images(lambda key: buf.getvalue())
    top = zoom_levels(width)
    assert top == 3  # 8 * 1024 >= 5420 > 4 * 1024
    for z in range(top + 1):
        span = TILE << z
        tiles = [
            np.asarray(Image.open(io.BytesIO(images.tile("x.png", z, i))))
            for i in range(-(-width // span))
        ]
        total = sum(t.shape[1] for t in tiles)
        assert width // 2**z <= total <= width // 2**z + len(tiles)
        assert all(t.shape[0] == 40 for t in tiles)
        if z == 0:
            assert np.array_equal(np.concatenate(tiles, axis=1), pixels)
    with pytest.raises(IndexError):
        images.tile("x.png", 0, 6)
    with pytest.raises(IndexError):
        images.tile("x.png", top + 1, 0)


def test_viewer_never_imports_torch(run_dir):
    """Pages, tiles, crops, audio and the report with the model stack made unimportable."""
    src, out = run_dir
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'librosa', 'numba', 'scipy', 'soundfile'):\n"
        "    sys.modules[m] = None\n"
        "import urllib.request, urllib.parse\n"
        "from echocam.view.server import make_server, start_in_thread\n"
        "from echocam.view import report\n"
        f"srv = make_server({str(out)!r}, port=0, quiet=True); start_in_thread(srv)\n"
        "base = f'http://127.0.0.1:{srv.server_address[1]}'\n"
        f"key = {SAMPLES[0].name!r}\n"
        "q = lambda **kw: urllib.parse.urlencode(kw)\n"
        "for t in ['/', '/failed', '/detections', '/rec?' + q(key=key),\n"
        "          '/tile?' + q(key=key + '/overlay.jpg', z=0, i=0),\n"
        "          '/crop?' + q(key=key, t=0.0, class_id=0) , '/audio?' + q(key=key),\n"
        "          '/colourbar/magma.png', '/colourbar/plasma.png']:\n"
        "    assert urllib.request.urlopen(base + t).status == 200, t\n"
        "report.build(srv.data)\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'librosa') if sys.modules.get(m)))\n"
    )
    # crops need a detection of class 0 at 0.0 s: make sure the sample has one
    record = json.loads((out / SAMPLES[0].name / "record.json").read_text())
    first = record["windows"][0]["explained"][0]
    code = code.replace("class_id=0)", f"class_id={first['class_id']})")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_package_data_ships_templates_and_static_files():
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["echocam.view"]
    view = ROOT / "echocam" / "view"
    shipped = {p for g in globs for p in view.glob(g)}
    wanted = {p for d in ("templates", "static") for p in (view / d).iterdir()}
    assert wanted and wanted <= shipped


# ---------------------------------------------------------------------------------------------
# a run in a bucket


@pytest.mark.slow
@pytest.mark.s3
def test_bucket_run_streams_ranges_and_never_shows_credentials(run_dir):
    """The local run's outputs and recordings in SeaweedFS; `echocam view s3://...` with the
    credentials in its environment: 206 answers from the bucket, and no page, file or header
    carries the access key, the secret or a presigned URL."""
    from devtools.services import SeaweedS3

    src, out = run_dir
    with SeaweedS3() as s3:
        client = s3.client()
        s3.create_bucket("cams-out")
        s3.create_bucket("field-audio")
        for p in out.rglob("*"):
            if p.is_file() and not p.is_symlink() and p.name != "report.html":
                key = f"runs/v1/{p.relative_to(out).as_posix()}"
                client.put_object(Bucket="cams-out", Key=key, Body=p.read_bytes())
        for p in src.rglob("*"):
            if p.is_file():
                key = f"survey/{p.relative_to(src).as_posix()}"
                client.put_object(Bucket="field-audio", Key=key, Body=p.read_bytes())
        run = json.loads((out / "run.json").read_text())
        run |= {"input": "s3://field-audio/survey", "output": "s3://cams-out/runs/v1"}
        client.put_object(Bucket="cams-out", Key="runs/v1/run.json", Body=json.dumps(run))
        env = {**os.environ, **s3.env()}
        secrets = [s3.access_key.encode(), s3.secret_key.encode(), b"X-Amz-", b"Signature="]

        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "echocam_cli", "view", "s3://cams-out/runs/v1",
             "--port", str(port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:

            def up() -> bool:
                assert proc.poll() is None, proc.stdout.read().decode()
                try:
                    return get(base, "/")[0] == 200
                except OSError:
                    return False

            wait_for(up, timeout=60, what="echocam view s3://")
            # every page and every link or source on it, once
            seen, todo = set(), ["/", "/failed", "/detections"]
            todo += [f"/rec?{urllib.parse.urlencode({'key': r['source_key']})}"
                     for r in manifest_rows(out)]  # fmt: skip
            while todo:
                target = todo.pop()
                if target in seen:
                    continue
                seen.add(target)
                status, headers, body = get(base, target)
                assert status == 200, target
                blob = body + json.dumps(headers).encode()
                assert not any(s in blob for s in secrets), target
                if headers["content-type"].startswith("text/html"):
                    for link in re.findall(r'(?:src|href)="(/[^"]*)"', body.decode()):
                        todo.append(link.replace("&amp;", "&"))
            assert any(t.startswith("/audio?") for t in seen)
            assert any(t.startswith("/file/") and t.endswith("cam.npz") for t in seen)
            for key in (SAMPLES[-1].name, UNICODE_KEY):
                data = (src / key).read_bytes()
                target = "/audio?" + urllib.parse.urlencode({"key": key})
                status, headers, body = get(base, target, {"Range": "bytes=100-4195"})
                assert status == 206 and body == data[100:4196]
                assert headers["content-range"] == f"bytes 100-4195/{len(data)}"
                status, _, body = get(base, target, {"Range": "bytes=-1000"})
                assert status == 206 and body == data[-1000:]
            record = json.loads((out / SAMPLES[-1].name / "record.json").read_text())
            tile = "/tile?" + urllib.parse.urlencode(
                {"key": record["outputs"]["overlay"], "z": 0, "i": 1}
            )
            assert get(base, tile)[0] == 200
            assert get(base, "/file/../runs/v1/run.json")[0] == 404
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)

        rep = echocam("report", "s3://cams-out/runs/v1", env=env)
        assert rep.returncode == 0, rep.stderr
        html = client.get_object(Bucket="cams-out", Key="runs/v1/report.html")["Body"].read()
        assert b"data:image/png;base64," in html
        assert not any(s in html for s in secrets)
