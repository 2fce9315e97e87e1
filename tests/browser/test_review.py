"""Review mode of `echocam view`: the JSON API and its guards, verdicts that survive a killed
viewer, two viewers and a flood, and the page driven with the keyboard in real Chromium.

The run: held-out synthetic clips over real recordings, explained by the seeded species
checkpoint (two classes a window), so every test has a few dozen detections to judge.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from devtools.services import free_port, wait_for
from echocam.bucket import reviews
from echocam.bucket.detections import detection_id
from echocam.bucket.storage import LocalStore
from echocam.errors import InvalidParams
from echocam.view.server import make_server, start_in_thread
from tests.browser.test_viewer import (  # noqa: F401 (fixtures)
    browser,
    console_errors,
    echocam,
    get,
    screenshots,
    shoot,
)
from tests.helpers import ROOT

DOCS_SHOT = ROOT / "docs" / "screenshots" / "view-review.png"


@pytest.fixture(scope="module")
def review_run(tmp_path_factory, species_data, species_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("review-run")
    proc = echocam(
        "run", str(species_data["heldout"]), "--out", str(out),
        "--weights", str(species_checkpoint), "--top-k", "2", "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def run(review_run, tmp_path) -> Path:
    """A fresh copy of the run: each test's verdicts are its own."""
    dst = tmp_path / "run"
    shutil.copytree(review_run, dst)
    return dst


def detections(run: Path) -> list[dict]:
    return pq.read_table(run / "detections.parquet").to_pylist()


def ids(run: Path) -> list[str]:
    return [detection_id(d["source_key"], d["begin_s"], d["class_name"]) for d in detections(run)]


def stored(run: Path) -> list[dict]:
    """Every verdict line of every ``_reviews/`` object."""
    out = []
    for p in sorted((run / "_reviews").glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


class Api:
    """A client of the review API, as a script (or the page) uses it."""

    def __init__(self, base: str, *, token: str | None = None):
        self.base, self.auth = base, ({"Authorization": f"Bearer {token}"} if token else {})
        status, headers, body = get(base, "/api/review/session", self.auth)
        assert status == 200, body
        assert not any(k.startswith("access-control") for k in headers)  # no CORS
        self.csrf = json.loads(body)["csrf"]

    def queue(self, **query) -> list[dict]:
        from urllib.parse import urlencode

        status, _, body = get(self.base, "/api/review/queue?" + urlencode(query), self.auth)
        assert status == 200, body
        return json.loads(body)["items"]

    def post(self, verdicts, *, headers=None, raw: bytes | None = None):
        import urllib.parse

        u = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        body = raw if raw is not None else json.dumps({"verdicts": verdicts}).encode()
        h = {"Content-Type": "application/json", "X-CSRF-Token": self.csrf, **self.auth}
        h.update(headers or {})
        try:
            conn.request("POST", "/api/review/verdicts", body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()


@pytest.fixture
def in_process(run):
    """A review-mode viewer in this process, for the HTTP-level checks."""
    srv = make_server(str(run), port=0, quiet=True, review="ann")
    start_in_thread(srv)
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def start_viewer(run: Path, reviewer: str, *, port: int | None = None, extra=()):
    port = port or free_port()
    log = open(run.parent / f"view-{reviewer}-{port}.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "echocam_cli", "view", str(run), "--port", str(port),
         "--review", reviewer, *extra],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, Path(log.name).read_text()
        try:
            return get(url, "/api/review/session")[0] == 200
        except OSError:
            return False

    wait_for(up, timeout=60, what="echocam view --review")
    return proc, url, log


def current(driver) -> str:
    """The id of the item the review page shows."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "review").get_attribute("data-item")


def shown_image(driver) -> bool:
    """Whether the review page's spectrogram has loaded (a person sees the item)."""
    return driver.execute_script(
        "const c = document.getElementById('crop'); return c.complete && c.naturalWidth > 0"
    )


def stop(proc, log) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    log.close()


def test_a_read_only_viewer_refuses_every_review_route(run):
    srv = make_server(str(run), port=0, quiet=True)
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        for target in ("/review", "/api/review/session", "/api/review/queue",
                       "/api/review/verdicts", "/review/crop?id=x"):  # fmt: skip
            assert get(base, target)[0] == 403, target
        status, _, _ = get(base, "/api/review/verdicts", method="POST")
        assert status == 403
        assert get(base, "/")[0] == 200  # the rest stays as it was
    finally:
        srv.shutdown()
        srv.server_close()
    assert not (run / "_reviews").exists()


def test_posts_need_the_csrf_token_json_and_the_same_origin(in_process, run):
    api = Api(in_process)
    item = api.queue(n=1)[0]
    one = [{"id": item["id"], "verdict": "yes"}]
    assert api.post(one, headers={"X-CSRF-Token": "forged"})[0] == 403
    assert api.post(one, headers={"X-CSRF-Token": ""})[0] == 403
    assert api.post(one, headers={"Origin": "http://evil.example"})[0] == 403
    assert api.post(one, headers={"Origin": "null"})[0] == 403
    assert api.post(one, headers={"Content-Type": "text/plain"})[0] == 415
    assert api.post(None, raw=b"x" * ((1 << 20) + 1))[0] == 413
    assert not (run / "_reviews").exists()  # none of those stored anything
    host = in_process.removeprefix("http://")
    status, body = api.post(one, headers={"Origin": f"http://{host}"})
    assert (status, body) == (200, {"ids": [item["id"]]})


@pytest.mark.parametrize(
    "bad",
    [
        [{"id": "nowhere.wav@0.0#Wren", "verdict": "yes"}],  # no such detection
        [{"id": "../../etc/passwd", "verdict": "yes"}],
        [{"verdict": "yes"}],
        ["yes"],
        [],
        [{"id": "ITEM", "verdict": "maybe"}],
        [{"id": "ITEM", "verdict": "yes", "label": "../x"}],
        [{"id": "ITEM", "verdict": "yes", "label": "<script>"}],
        [{"id": "ITEM", "verdict": "yes", "label": "a" * 81}],
        [{"id": "ITEM", "verdict": "no", "label": "Wren"}],
        [{"id": "ITEM", "verdict": "yes", "at": "not a time"}],
        [{"id": "ITEM", "verdict": "yes"}] * (reviews.MAX_BATCH + 1),
    ],
)
def test_a_bad_verdict_is_refused_whole_and_clearly(in_process, run, bad):
    api = Api(in_process)
    item = api.queue(n=1)[0]
    batch = [
        json.loads(json.dumps(v).replace('"ITEM"', json.dumps(item["id"]))) if isinstance(v, dict)
        else v for v in bad
    ]  # fmt: skip
    if batch and len(batch) <= reviews.MAX_BATCH:  # one good verdict with it: refused too
        batch.append({"id": item["id"], "verdict": "yes"})
    status, body = api.post(batch)
    assert status == 400 and body["error"], body
    assert not (run / "_reviews").exists()


def test_verdicts_are_stored_with_what_the_reviewer_was_shown(in_process, run):
    api = Api(in_process)
    items = api.queue(n=3, strategy="top")
    probs = [i["probability"] for i in items]
    assert probs == sorted(probs, reverse=True)
    other = next(c for c in json.loads((run / "run.json").read_text())["class_names"]
                 if c != items[1]["class_name"])  # fmt: skip
    status, body = api.post(
        [
            {"id": items[0]["id"], "verdict": "yes"},
            {"id": items[1]["id"], "verdict": "yes", "label": other},
            {"id": items[2]["id"], "verdict": "no"},
        ]
    )
    assert status == 200 and body["ids"] == [i["id"] for i in items]
    lines = stored(run)
    assert len(list((run / "_reviews").glob("*.jsonl"))) == 1 and len(lines) == 3
    run_json = json.loads((run / "run.json").read_text())
    table = {detection_id(d["source_key"], d["begin_s"], d["class_name"]): d
             for d in detections(run)}  # fmt: skip
    for line, item in zip(lines, items, strict=True):
        row = table[item["id"]]
        assert line["run_id"] == run_json["run_id"]
        assert line["model_sha256"] == run_json["model"]["sha256"]
        assert line["reviewer"] == "ann" and line["probability"] == row["probability"]
        assert line["box"] == [row["box_begin_s"], row["box_end_s"], row["box_low_hz"],
                               row["box_high_hz"]]  # fmt: skip
        assert (line["source_key"], line["begin_s"], line["class_name"]) == (
            row["source_key"], row["begin_s"], row["class_name"])  # fmt: skip
    assert lines[1]["label"] == other
    # judged items are not offered again, unless asked
    again = {i["id"] for i in api.queue(n=100, strategy="top")}
    assert not again & {i["id"] for i in items}
    assert {i["id"] for i in items} <= {
        i["id"] for i in api.queue(n=100, strategy="top", include_reviewed=1)
    }


def test_queue_strategies_filters_and_hostile_parameters(in_process, run):
    api = Api(in_process)
    table = detections(run)
    all_ids = set(ids(run))
    for strategy in ("top", "random", "stratified", "uncertain"):
        got = api.queue(n=100, strategy=strategy)
        assert {i["id"] for i in got} == all_ids, strategy  # each is an order of the same set
        assert len(got) == len(all_ids)
    name = table[0]["class_name"]
    only = api.queue(n=100, **{"class": name, "min_probability": 0.2, "max_probability": 0.9})
    assert only and all(i["class_name"] == name and 0.2 <= i["probability"] <= 0.9 for i in only)
    # stratified: the first items come from different probability bins of the class
    probs = [d["probability"] for d in table if d["class_name"] == name]
    lo = min(probs)

    def bin_of(p: float) -> int:
        return min(9, int((p - lo) / max(1 - lo, 1e-9) * 10))

    k = len({bin_of(p) for p in probs})
    firsts = api.queue(n=k, strategy="stratified", **{"class": name})
    assert len({bin_of(i["probability"]) for i in firsts}) == k
    # uncertain: nearest 0.5 (no thresholds given) first
    unc = api.queue(n=100, strategy="uncertain")
    gaps = [abs(i["probability"] - 0.5) for i in unc]
    assert gaps == sorted(gaps)
    assert api.queue(**{"class": "x' OR 1=1 --"}) == []
    for target in (
        "/api/review/queue?strategy=drop",
        "/api/review/queue?min_probability=2",
        "/api/review/queue?n=abc",
    ):
        assert get(in_process, target)[0] == 400, target
    for crop_id in ("../../run.json@0#x", "/etc/passwd@0#x", "a@b#c", ""):
        from urllib.parse import quote

        assert get(in_process, "/review/crop?id=" + quote(crop_id))[0] == 404, crop_id
    status, headers, body = get(in_process, "/review/crop?id=" + quote(sorted(all_ids)[0]))
    assert status == 200 and headers["content-type"] == "image/png" and body[:4] == b"\x89PNG"


def test_a_token_and_an_exposed_address(run):
    with pytest.raises(InvalidParams, match="--token"):
        make_server(str(run), host="0.0.0.0", port=0, quiet=True, review="ann")
    srv = make_server(str(run), port=0, quiet=True, review="ann", token="t0k3n")
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert get(base, "/api/review/session")[0] == 401
        api = Api(base, token="t0k3n")
        item = api.queue(n=1)[0]
        assert api.post([{"id": item["id"], "verdict": "no"}])[0] == 200
        status, _, _ = get(base, "/api/review/verdicts", {"Authorization": "Bearer wrong"})
        assert status == 401
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(InvalidParams, match="reviewer"):
        make_server(str(run), port=0, quiet=True, review="../ann")


def _burst(api: Api, targets: list[str], *, reviewer_tag: str, acked: list, stop_on, n_batches,
           size=20):  # fmt: skip
    """POST batches of verdicts with unique times until told to stop; keep what was acked."""
    for b in range(n_batches):
        if stop_on.is_set():
            return
        batch = []
        for j in range(size):
            t = time.time_ns() // 1000 + j
            at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1e6)) + f".{t % 10**6:06d}Z"
            batch.append({"id": targets[(b * size + j) % len(targets)],
                          "verdict": ("yes", "no")[(b + j) % 2], "at": at})  # fmt: skip
        try:
            status, body = api.post(batch)
        except (OSError, http.client.HTTPException):
            return  # the viewer is gone
        if status != 200:
            return
        assert body["ids"] == [v["id"] for v in batch]
        acked.extend((v["id"], v["at"], reviewer_tag) for v in batch)


class Bursts:
    """One thread per (api, reviewer) of ``clients`` running :func:`_burst` at once; ``acked``
    gathers what the viewers acknowledged, as (id, at, reviewer); ``halt`` stops them."""

    def __init__(self, clients, targets: list[str], *, n_batches: int, size: int = 20):
        self.acked: list = []
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(
                target=_burst,
                args=(api, targets),
                kwargs={
                    "reviewer_tag": who,
                    "acked": self.acked,
                    "stop_on": self.halt,
                    "n_batches": n_batches,
                    "size": size,
                },
            )  # fmt: skip
            for api, who in clients
        ]
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout=timeout)

    def __enter__(self) -> Bursts:
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()  # a test that failed midway leaves no client posting


@pytest.mark.slow
def test_a_viewer_killed_during_a_burst_loses_no_acknowledged_verdict(run):
    proc, url, log = start_viewer(run, "ann")
    try:
        with Bursts([(Api(url), "ann")] * 4, ids(run), n_batches=10_000) as bursts:
            acked = bursts.acked
            wait_for(lambda: len(acked) >= 400, timeout=60, what="400 acknowledged verdicts")
            os.killpg(proc.pid, signal.SIGKILL)  # mid-burst: requests are in flight
            proc.wait(timeout=10)
            bursts.halt.set()
            bursts.join(timeout=30)
    finally:
        stop(proc, log)
    have = {(v["id"], v["at"], v["reviewer"]) for v in stored(run)}
    missing = set(acked) - have
    assert not missing, f"{len(missing)} acknowledged verdicts lost"
    assert len(acked) >= 400
    # and what was stored reads back: a new viewer starts over the same run
    proc, url, log = start_viewer(run, "ann")
    try:
        mine = json.loads(get(url, "/api/review/verdicts?n=1000")[2])
        assert sum(mine["counts"].values()) == len({a[0] for a in acked})
    finally:
        stop(proc, log)


@pytest.mark.slow
def test_two_viewers_reviewing_one_run_at_once_lose_nothing(run):
    a, url_a, log_a = start_viewer(run, "ann")
    b, url_b, log_b = start_viewer(run, "bob")
    try:
        apis = {"ann": Api(url_a), "bob": Api(url_b)}
        clients = [(apis[who], who) for who in ("ann", "bob", "ann", "bob")]
        with Bursts(clients, ids(run), n_batches=15) as bursts:
            bursts.join(timeout=120)
        acked = bursts.acked
        assert len(acked) == 4 * 15 * 20
        lines = stored(run)
        assert {(v["id"], v["at"], v["reviewer"]) for v in lines} == set(acked)
        assert len(lines) == len(acked)
        # merged: per reviewer and detection, the latest
        merged = reviews.Reviews.load(LocalStore(str(run)))
        for who, url in (("ann", url_a), ("bob", url_b)):
            latest: dict = {}
            for i, at, w in sorted(acked, key=lambda a: a[1]):
                if w == who:
                    latest[i] = at
            assert {v["id"]: v["at"] for v in merged.standing(reviewer=who)} == latest
            body = json.loads(get(url, "/api/review/verdicts?n=1")[2])
            assert sum(body["counts"].values()) == len(latest), who
    finally:
        stop(a, log_a)
        stop(b, log_b)


@pytest.mark.slow
def test_ten_thousand_verdicts_in_a_minute_hold(run):
    proc, url, log = start_viewer(run, "ann")
    targets = ids(run)
    try:
        api = Api(url)
        t0 = time.monotonic()
        with Bursts([(api, "ann")] * 4, targets, n_batches=50, size=50) as bursts:
            bursts.join(timeout=300)
        took = time.monotonic() - t0
        print(f"\n10,000 verdicts in {took:.1f} s (4 clients, 50 a request)")
        assert len(bursts.acked) == 10_000
        assert len(stored(run)) == 10_000
        # the viewer still answers, with every verdict merged
        mine = json.loads(get(url, "/api/review/verdicts?n=5")[2])
        assert sum(mine["counts"].values()) == len(set(targets))
        assert api.queue(n=5) == []  # every detection judged
    finally:
        stop(proc, log)


@pytest.mark.slow
def test_the_page_reviews_twenty_items_with_the_keyboard(run, browser, screenshots):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    proc, url, log = start_viewer(run, "ann")
    browser.get_log("browser")  # the module's browser: an earlier test's messages are not ours
    try:
        browser.get(url + "/review?strategy=top")
        wait_for(lambda: current(browser) and shown_image(browser),
                 timeout=30, what="the first item")  # fmt: skip
        classes = json.loads((run / "run.json").read_text())["class_names"]
        keys = [Keys.ARROW_UP, "n", Keys.ARROW_DOWN, "y", Keys.ARROW_RIGHT, "s", "2"] * 3
        keys = keys[:20]
        body = browser.find_element(By.TAG_NAME, "body")
        shown = []
        for k in keys:
            item = current(browser)
            shown.append(item)
            body.send_keys(k)
            wait_for(lambda item=item: current(browser) != item and shown_image(browser),
                     timeout=10, what="the next item")  # fmt: skip
        assert len(set(shown)) == 20
        body.send_keys(Keys.ARROW_LEFT)  # undo the last (a skip)
        wait_for(lambda: current(browser)
                 == shown[-1], timeout=10, what="the undone item back")  # fmt: skip
        wait_for(lambda: browser.execute_script(
            "return window.echocamReview.pending() === 0 && window.echocamReview.saved() === 21"),
            timeout=30, what="every verdict acknowledged")  # fmt: skip
        switch = browser.execute_script("return window.echocamReview.switchMs")
        switch = sorted(switch)
        median = switch[len(switch) // 2]
        print(f"\nkey → next item shown: median {median:.0f} ms, max {switch[-1]:.0f} ms "
              f"over {len(switch)} keys (loopback)")  # fmt: skip
        assert median < 100, switch  # the target: the next item's image was loaded ahead
        assert not console_errors(browser)

        expected = {}
        want = {Keys.ARROW_UP: "yes", "y": "yes", "n": "no", Keys.ARROW_DOWN: "no",
                Keys.ARROW_RIGHT: "skip", "s": "skip", "2": "yes"}  # fmt: skip
        for item, k in zip(shown[:-1], keys[:-1], strict=True):
            expected[item] = (want[k], classes[1] if k == "2" else None)
        merged = reviews.Reviews.load(LocalStore(str(run)))
        got = {v["id"]: (v["verdict"], v["label"]) for v in merged.standing(reviewer="ann")}
        # a "2" on an item of classes[1] is a plain yes
        for item, (verdict, label) in expected.items():
            if label and item.endswith("#" + label):
                expected[item] = (verdict, None)
        assert got == expected

        browser.refresh()
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#mine tr.verdict")) == 19,
                 timeout=30, what="the verdicts listed after a reload")  # fmt: skip
        assert current(browser) == shown[-1]
        counts = browser.find_element(By.ID, "counts").text
        for verdict in ("yes", "no", "skip"):
            n = sum(v == verdict for v, _ in expected.values())
            assert f"{verdict} {n}" in counts, counts
        shoot(browser, screenshots / "review.png")
        if os.environ.get("ECHOCAM_DOCS_SCREENSHOTS"):
            shutil.copy(screenshots / "review.png", DOCS_SHOT)
    finally:
        stop(proc, log)


@pytest.mark.slow
def test_the_page_keeps_verdicts_while_the_viewer_is_down_and_sends_them_again(
    run,
    browser,  # noqa: F811
):
    from selenium.webdriver.common.by import By

    port = free_port()
    proc, url, log = start_viewer(run, "ann", port=port)
    try:
        browser.get(url + "/review?strategy=random")
        wait_for(lambda: current(browser),
                 timeout=30, what="the first item")  # fmt: skip
        body = browser.find_element(By.TAG_NAME, "body")
        stop(proc, log)  # the viewer goes away
        judged = []
        for _ in range(3):
            judged.append(current(browser))
            body.send_keys("y")
            time.sleep(0.2)
        wait_for(lambda: "3 not yet saved" in browser.find_element(By.ID, "pending").text,
                 timeout=10, what="the page showing what is not saved")  # fmt: skip
        assert not (run / "_reviews").exists()
        proc, url, log = start_viewer(run, "ann", port=port)  # back, with a new CSRF secret
        wait_for(lambda: browser.execute_script("return window.echocamReview.pending() === 0"),
                 timeout=30, what="the page sending them again")  # fmt: skip
        got = {v["id"]: v["verdict"] for v in stored(run)}
        assert {i for i in judged if i} <= set(got) and set(got.values()) == {"yes"}
    finally:
        stop(proc, log)


def test_per_class_thresholds_in_the_viewer_the_report_and_the_uncertain_queue(run, tmp_path):
    import re

    table = detections(run)
    names = sorted({d["class_name"] for d in table})
    first = sorted(d["probability"] for d in table if d["class_name"] == names[0])
    second = [d["probability"] for d in table if d["class_name"] == names[1]]
    # half of one class, none of another; the others: the floor, 0
    cut = {names[0]: first[len(first) // 2], names[1]: min(1.0, max(second) + 1e-3)}
    (tmp_path / "t.json").write_text(json.dumps(cut))
    want = [d for d in table if d["probability"] >= cut.get(d["class_name"], 0.0)]
    assert 0 < len(want) < len(table)
    srv = make_server(str(run), port=0, quiet=True, review="ann", class_min_probability=cut)
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        page = get(base, "/detections")[2].decode()
        assert f"{len(want)} detections match" in page
        # uncertain: nearest each class's own threshold (0.5 where none is given)
        unc = Api(base).queue(n=100, strategy="uncertain")
        gaps = [abs(i["probability"] - cut.get(i["class_name"], 0.5)) for i in unc]
        assert gaps == sorted(gaps) and unc[0]["threshold"] == cut.get(unc[0]["class_name"], 0.5)
    finally:
        srv.shutdown()
        srv.server_close()
    proc = echocam("report", str(run), "--min-probability", str(tmp_path / "t.json"))
    assert proc.returncode == 0, proc.stderr
    report = (run / "report.html").read_text()
    shown = re.findall(r"<b>([^<]+)</b> p=(\d\.\d{3})<br>", report)
    assert shown
    for name, p in shown:
        assert float(p) >= round(cut.get(name, 0.0), 3) - 1e-3, (name, p)
    assert names[1] not in {name for name, _ in shown}
    bad = echocam("report", str(run), "--min-probability", "2")
    assert bad.returncode != 0 and "probability" in bad.stderr


def test_the_similar_queue_is_the_search_and_the_similar_page_links_to_it(in_process, run):
    import html
    import re
    from urllib.parse import parse_qsl, urlencode

    from echocam.api import search

    d = detections(run)[3]
    qid = detection_id(d["source_key"], d["begin_s"], d["class_name"])
    items = Api(in_process).queue(n=10, strategy="similar", like=qid)
    hits = search(str(run), like_detection=qid, top=10)
    assert [i["id"] for i in items] == hits["detection_id"].tolist()
    sims = [i["similarity"] for i in items]
    assert sims == sorted(sims, reverse=True) and qid not in {i["id"] for i in items}
    query = {"key": d["source_key"], "t": d["begin_s"], "class": d["class_name"]}
    page = get(in_process, "/similar?" + urlencode(query))[2].decode()
    (href,) = re.findall(r'<a id="review-these" href="/review\?([^"]+)"', page)
    linked = dict(parse_qsl(html.unescape(href)))
    assert linked == {"strategy": "similar", "like": qid}
    assert get(in_process, "/api/review/queue?strategy=similar&like=nope")[0] == 400
