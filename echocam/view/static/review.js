// echocam view --review: judge detections one at a time with the keys, over the JSON API.
// Verdicts wait in `pending` (kept in localStorage, so a reload or a viewer restart loses none)
// until the viewer answers that they are durable; the next items are fetched and their images
// loaded ahead, so a key shows the next item without a round trip.
(function () {
  "use strict";
  const cfgEl = document.getElementById("review-data");
  if (!cfgEl) return;
  const CFG = JSON.parse(cfgEl.textContent);
  const $ = (id) => document.getElementById(id);
  const WIDTH = 900; // px: the crop's width (review.crop)
  const AHEAD = 5; // items kept fetched ahead
  const PAGE = 20; // items a queue request asks for
  const BATCH = 500; // verdicts a POST carries at most
  const NAME = /^[A-Za-z][A-Za-z0-9 _.'()-]{0,79}$/; // reviews.CLASS_NAME
  const storeKey = "echocam-review:" + CFG.run_id + ":" + CFG.reviewer;

  let csrf = null;
  let queue = []; // fetched, not yet shown
  let current = null;
  let exhausted = false;
  let fetching = null;
  const judged = new Set(); // ids judged on this page (saved or not)
  const history = []; // judged items, latest last: what undo brings back
  let pending = JSON.parse(localStorage.getItem(storeKey) || "[]");
  let inflight = false;
  let saved = 0;
  let lastAt = 0;
  let keyAt = null; // performance.now() of the key that asked for the item being loaded

  const state = { switchMs: [], saved: () => saved, pending: () => pending.length };
  window.echocamReview = state; // for the browser test and the curious

  function persist() {
    localStorage.setItem(storeKey, JSON.stringify(pending));
    const el = $("pending");
    el.textContent = pending.length + " not yet saved";
    el.classList.toggle("some", pending.length > 0);
    $("saved").textContent = String(saved);
  }

  function error(text) {
    $("error").textContent = text || "";
  }

  async function session() {
    const r = await fetch("/api/review/session", { credentials: "same-origin" });
    if (!r.ok) throw new Error("session: " + r.status);
    csrf = (await r.json()).csrf;
  }

  function queueUrl() {
    const p = new URLSearchParams(CFG.query);
    p.set("n", String(PAGE));
    return "/api/review/queue?" + p.toString();
  }

  function cropUrl(item) {
    return "/review/crop?" + new URLSearchParams({ id: item.id }).toString();
  }

  function known(id) {
    return judged.has(id) || (current && current.id === id) || queue.some((q) => q.id === id);
  }

  function fill() {
    if (fetching) return fetching;
    if (exhausted || queue.length >= AHEAD) return Promise.resolve();
    fetching = (async () => {
      try {
        const r = await fetch(queueUrl(), { credentials: "same-origin" });
        const body = await r.json();
        if (!r.ok) {
          error(body.error || "queue: " + r.status);
          exhausted = true;
          return;
        }
        for (const item of body.items) {
          if (known(item.id)) continue;
          queue.push(item);
          new Image().src = cropUrl(item); // load ahead: the browser keeps it
        }
        // fewer than asked: the queue has no more (judged ones come back filtered out)
        if (body.items.length < PAGE) exhausted = true;
      } catch (e) {
        error("queue: " + e.message);
      } finally {
        fetching = null;
      }
    })();
    return fetching;
  }

  function fmt(x, d) {
    return x === null || x === undefined ? "" : Number(x).toFixed(d);
  }

  function show(item) {
    current = item;
    const player = $("player");
    if (!item) {
      $("title").textContent = exhausted ? "Nothing left to review with these filters" : "loading…";
      $("crop").removeAttribute("src");
      $("others").textContent = "";
      $("where").textContent = "";
      $("review").dataset.item = "";
      return;
    }
    $("title").textContent =
      item.class_name + " · " + fmt(item.probability, 3) + " (threshold " + fmt(item.threshold, 2) + ")";
    $("others").textContent = item.others.length
      ? "also: " + item.others.map((o) => o.class_name + " " + fmt(o.probability, 2)).join(", ")
      : "";
    const call = item.call_begin_s === null ? "no call box" :
      "call " + fmt(item.call_begin_s, 2) + "–" + fmt(item.call_end_s, 2) + " s, " +
      fmt(item.call_low_hz, 0) + "–" + fmt(item.call_high_hz, 0) + " Hz";
    $("where").textContent = item.source_key + " · window " + fmt(item.begin_s, 2) + "–" +
      fmt(item.end_s, 2) + " s · " + call + " · shown " + fmt(item.view.t0, 1) + "–" +
      fmt(item.view.t1, 1) + " s";
    $("review").dataset.item = item.id;
    $("crop").src = cropUrl(item);
    const src = "/audio?" + new URLSearchParams({ key: item.source_key }).toString();
    if (player.dataset.key !== item.source_key) {
      player.dataset.key = item.source_key;
      player.src = src;
    }
    player.pause();
    try {
      player.currentTime = item.view.play_from;
    } catch (e) {
      /* not loaded yet: play() seeks */
    }
  }

  function advance() {
    show(queue.shift() || null);
    fill().then(() => {
      if (!current && queue.length) show(queue.shift());
      else if (!current) show(null);
    });
  }

  function stamp() {
    lastAt = Math.max(Date.now(), lastAt + 1); // strictly increasing: the order they were given
    return new Date(lastAt).toISOString();
  }

  function give(verdict, label) {
    if (!current) return;
    keyAt = performance.now();
    const v = { id: current.id, verdict: verdict, at: stamp() };
    if (label) v.label = label;
    pending.push(v);
    judged.add(current.id);
    history.push(current);
    persist();
    advance();
    flush();
  }

  function undo() {
    const item = history.pop();
    if (!item) return;
    keyAt = performance.now();
    pending.push({ id: item.id, verdict: "undo", at: stamp() });
    judged.delete(item.id);
    persist();
    if (current) queue.unshift(current);
    show(item);
    flush();
  }

  async function flush() {
    if (inflight || !pending.length) return;
    inflight = true;
    const batch = pending.slice(0, BATCH);
    let retry = 0;
    try {
      if (!csrf) await session();
      const r = await fetch("/api/review/verdicts", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ verdicts: batch }),
      });
      if (r.ok) {
        pending.splice(0, batch.length);
        saved += batch.length;
        error("");
        mine();
      } else if (r.status === 403) {
        csrf = null; // a restarted viewer knows no old token: ask again
        retry = 1000;
      } else if (r.status === 400) {
        const body = await r.json();
        error("not saved: " + body.error);
        pending.splice(0, batch.length); // the viewer refuses these: resending cannot help
      } else {
        retry = 1000;
      }
    } catch (e) {
      error("the viewer is not answering; verdicts wait here and go again");
      retry = 1000;
    } finally {
      inflight = false;
      persist();
    }
    if (retry) setTimeout(flush, retry);
    else if (pending.length) flush();
    else fill().then(() => { if (!current && queue.length) show(queue.shift()); });
  }

  let mineTimer = null;
  function mine() {
    clearTimeout(mineTimer);
    mineTimer = setTimeout(async () => {
      const r = await fetch("/api/review/verdicts?n=25", { credentials: "same-origin" });
      if (!r.ok) return;
      const body = await r.json();
      const counts = Object.entries(body.counts).map(([k, n]) => k + " " + n).join(", ");
      $("counts").textContent = counts ? "standing verdicts: " + counts : "none yet";
      const rows = body.verdicts.map((v) => {
        const tr = document.createElement("tr");
        tr.className = "verdict";
        const cells = [
          v.verdict + (v.label ? " → " + v.label : ""),
          v.class_name,
          v.source_key,
          fmt(v.begin_s, 2),
          fmt(v.probability, 3),
          v.at.replace("T", " ").slice(0, 19),
        ];
        cells.forEach((text, i) => {
          const td = document.createElement("td");
          td.textContent = text;
          if (i === 0) td.className = v.verdict;
          tr.appendChild(td);
        });
        return tr;
      });
      $("mine").querySelector("tbody").replaceChildren(...rows);
    }, 150);
  }

  function play() {
    const player = $("player");
    if (!current) return;
    if (!player.paused) return player.pause();
    const { play_from } = current.view;
    if (Math.abs(player.currentTime - play_from) > 0.05 && player.currentTime >= current.end_s) {
      player.currentTime = play_from;
    }
    player.play().catch(() => {});
  }

  function playhead() {
    const player = $("player");
    const head = $("head");
    if (current && !player.paused) {
      const { t0, t1 } = current.view;
      const x = ((player.currentTime - t0) / (t1 - t0)) * WIDTH;
      head.style.display = x >= 0 && x <= WIDTH ? "block" : "none";
      head.style.left = x + "px";
      if (player.currentTime > current.end_s) player.pause(); // the window, then stop
    } else if (!current || player.paused) {
      head.style.display = "none";
    }
    requestAnimationFrame(playhead);
  }

  function typed() {
    const input = $("label");
    input.hidden = false;
    input.value = "";
    input.focus();
  }

  $("crop").addEventListener("load", () => {
    if (keyAt !== null) {
      state.switchMs.push(performance.now() - keyAt);
      $("review").dataset.switchMs = String(Math.round(state.switchMs.at(-1)));
      keyAt = null;
    }
  });
  document.querySelectorAll("button[data-verdict]").forEach((b) =>
    b.addEventListener("click", () => give(b.dataset.verdict)));
  document.querySelectorAll("button.other").forEach((b) =>
    b.addEventListener("click", () => give("yes", b.dataset.label)));
  $("undo").addEventListener("click", undo);
  $("play").addEventListener("click", play);
  $("typed").addEventListener("click", typed);
  $("label").addEventListener("keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Escape") {
      e.target.hidden = true;
    } else if (e.key === "Enter") {
      const name = e.target.value.trim();
      if (!NAME.test(name)) {
        error("a class name: a letter, then letters, digits, spaces or _-.'() (80 at most)");
        return;
      }
      e.target.hidden = true;
      give("yes", name);
    }
  });
  const KEYS = {
    ArrowUp: () => give("yes"), y: () => give("yes"),
    ArrowDown: () => give("no"), n: () => give("no"),
    ArrowRight: () => give("skip"), s: () => give("skip"),
    ArrowLeft: undo, u: undo,
    " ": play, c: typed,
  };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "SELECT" ||
        e.target.tagName === "INPUT") return;
    const digit = /^[1-9]$/.test(e.key) ? Number(e.key) : 0;
    const action = KEYS[e.key] || (digit && digit <= CFG.classes.length &&
      (() => give("yes", CFG.classes[digit - 1])));
    if (!action) return;
    e.preventDefault();
    action();
  });

  persist();
  session()
    .then(() => flush())
    .catch((e) => error(e.message));
  fill().then(() => show(queue.shift() || null));
  mine();
  requestAnimationFrame(playhead);
})();
