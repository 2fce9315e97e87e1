// echocam view: the recording page's pan/zoom over server-cut tiles, labels, boxes, axes and
// the playhead. The page's data is in <script type="application/json" id="rec-data">.
(function () {
  "use strict";
  const dataEl = document.getElementById("rec-data");
  if (!dataEl) return;
  const D = JSON.parse(dataEl.textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const vp = document.getElementById("viewport");
  const tilesEl = document.getElementById("tiles");
  const marks = document.getElementById("marks");
  const taxis = document.getElementById("taxis");
  const playhead = document.getElementById("playhead");
  const readout = document.getElementById("readout");
  const audio = document.getElementById("audio");
  const follow = document.getElementById("follow");
  const height = D.images.reduce((h, im) => Math.max(h, im.top + im.height), 0);
  vp.style.height = height + "px";
  marks.setAttribute("height", height);

  // The view: image column x0 at the left edge, cpp image columns per screen pixel.
  let x0 = 0;
  let cpp = 1;
  const W = () => vp.clientWidth;
  const maxCpp = () => Math.max(D.width / W(), 0.25);
  const colOf = (t) => t / D.dt; // a time's image column (cell [c, c + 1))
  const timeOf = (col) => col * D.dt;
  const sx = (col) => (col - x0) / cpp; // image column -> screen x

  function clamp() {
    cpp = Math.min(Math.max(cpp, 0.125), maxCpp());
    x0 = Math.min(Math.max(x0, 0), Math.max(0, D.width - W() * cpp));
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function drawTiles() {
    const want = new Map();
    for (const im of D.images) {
      const z = Math.min(Math.max(0, Math.floor(Math.log2(Math.max(cpp, 1)))), im.zmax);
      const span = D.tile * 2 ** z;
      const first = Math.floor(x0 / span);
      const last = Math.floor((x0 + W() * cpp) / span);
      for (let i = first; i <= last && i * span < D.width; i++) {
        const src = "/tile?" + new URLSearchParams({ ...im.query, z: z, i: i });
        const cols = Math.min(span, D.width - i * span);
        want.set(src, { left: sx(i * span), width: cols / cpp, top: im.top, height: im.height });
      }
    }
    for (const img of [...tilesEl.children]) {
      if (!want.has(img.dataset.src)) img.remove();
    }
    const have = new Set([...tilesEl.children].map((img) => img.dataset.src));
    for (const [src, box] of want) {
      let img;
      if (have.has(src)) {
        img = tilesEl.querySelector(`img[data-src="${CSS.escape(src)}"]`);
      } else {
        img = document.createElement("img");
        img.className = "tile";
        img.dataset.src = src;
        img.alt = "";
        img.src = src;
        tilesEl.appendChild(img);
      }
      img.style.left = box.left + "px";
      img.style.width = box.width + "px";
      img.style.top = box.top + "px";
      img.style.height = box.height + "px";
    }
  }

  function drawMarks() {
    marks.replaceChildren();
    marks.setAttribute("width", W());
    for (let b = 1; b < D.bands; b++) {
      const y = D.band_top + b * D.band;
      marks.appendChild(el("line", { class: "band", x1: 0, x2: W(), y1: y, y2: y }));
    }
    const winPx = colOf(D.window) / cpp;
    const every = Math.max(1, Math.ceil(210 / Math.max(winPx, 1)));
    D.windows.forEach((w, j) => {
      const left = sx(colOf(w.t));
      const right = sx(colOf(w.t + D.window));
      if (right < 0 || left > W()) return;
      marks.appendChild(el("line", { class: "seam", x1: left, x2: left, y1: 0, y2: height }));
      w.explained.forEach((c, band) => {
        const top = D.band_top + band * D.band_stride;
        if (c.box) {
          const [b0, b1, rowHigh, rowLow] = c.box;
          const x = sx(colOf(b0));
          marks.appendChild(el("rect", {
            class: "box", x: x, y: top + rowHigh,
            width: Math.max(1, sx(colOf(b1) + 1) - x), height: Math.max(1, rowLow - rowHigh + 1),
          }));
        }
        if (c.call) {  // seconds ± half a frame, band edges: pixel edges, not centres
          const [c0, c1, yHigh, yLow] = c.call;
          const x = sx(colOf(c0) + 0.5);
          marks.appendChild(el("rect", {
            class: "call", x: x, y: top + yHigh,
            width: Math.max(1, sx(colOf(c1) + 0.5) - x), height: Math.max(1, yLow - yHigh),
          }));
        }
        // a window that starts off-screen keeps its label only if there is room for it
        if (j % every === 0 && right - Math.max(left, 0) > 170) {
          const label = `${c.name} ${c.p.toFixed(3)}`;
          marks.appendChild(el("text", { class: "label", x: Math.max(left, 0) + 4, y: top + 15 },
            label));
        }
      });
    });
    if (drawn) {  // the box drawn with shift + drag (seconds, image rows)
      const x = sx(colOf(drawn.t0));
      marks.appendChild(el("rect", {
        class: "drawn", x: x, y: drawn.y0, width: Math.max(1, sx(colOf(drawn.t1)) - x),
        height: Math.max(1, drawn.y1 - drawn.y0),
      }));
    }
  }

  function niceStep(pxPerSecond) {
    const steps = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200];
    return steps.find((s) => s * pxPerSecond >= 70) || 1800;
  }

  function drawTimeAxis() {
    taxis.replaceChildren();
    taxis.setAttribute("width", W());
    const pxPerSecond = 1 / (D.dt * cpp);
    const step = niceStep(pxPerSecond);
    const t0 = timeOf(x0);
    const t1 = timeOf(x0 + W() * cpp);
    const digits = step < 0.1 ? 2 : step < 1 ? 1 : 0;
    for (let t = Math.ceil(t0 / step) * step; t <= t1 + 1e-9; t += step) {
      const x = sx(colOf(t) + 0.5);
      taxis.appendChild(el("line", { x1: x, x2: x, y1: 0, y2: 6 }));
      taxis.appendChild(el("text", { class: "tick", x: x, y: 18, "text-anchor": "middle" },
        t.toFixed(digits)));
    }
    taxis.appendChild(el("text", { class: "title", x: W() / 2, y: 34, "text-anchor": "middle" },
      "time (s)"));
  }

  function drawPlayhead() {
    const t = audio ? audio.currentTime : 0;
    const x = sx(colOf(t) + 0.5);
    playhead.style.left = x - 1 + "px";
    playhead.style.display = x < -2 || x > W() + 2 ? "none" : "block";
    readout.textContent = `${timeOf(x0).toFixed(2)}–${timeOf(x0 + W() * cpp).toFixed(2)} s · ` +
      `playhead ${t.toFixed(2)} s`;
  }

  function render() {
    clamp();
    drawTiles();
    drawMarks();
    drawTimeAxis();
    drawPlayhead();
  }

  function zoomAt(factor, screenX) {
    const col = x0 + screenX * cpp;
    cpp = cpp * factor;
    clamp();
    x0 = col - screenX * cpp;
    render();
  }

  function goTo(t, { span } = {}) {
    if (span) cpp = colOf(span) / W();
    clamp();
    x0 = colOf(t) - 0.1 * W() * cpp;
    render();
  }

  // controls
  document.getElementById("zoom-in").addEventListener("click", () => zoomAt(0.5, W() / 2));
  document.getElementById("zoom-out").addEventListener("click", () => zoomAt(2, W() / 2));
  document.getElementById("fit").addEventListener("click", () => { cpp = maxCpp(); x0 = 0; render(); });
  document.getElementById("left").addEventListener("click", () => { x0 -= 0.8 * W() * cpp; render(); });
  document.getElementById("right").addEventListener("click", () => { x0 += 0.8 * W() * cpp; render(); });
  vp.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    if (Math.abs(ev.deltaX) > Math.abs(ev.deltaY) || ev.shiftKey) {
      x0 += (ev.deltaX || ev.deltaY) * cpp;
      render();
    } else {
      const rect = vp.getBoundingClientRect();
      zoomAt(ev.deltaY > 0 ? 1.25 : 0.8, ev.clientX - rect.left);
    }
  }, { passive: false });
  let drag = null;
  let drawing = null; // shift + drag: a box (seconds, image rows) to search for
  let drawn = null;
  const drawnLink = document.getElementById("drawn");
  function boxAt(ev) {
    const rect = vp.getBoundingClientRect();
    const t = Math.min(Math.max(timeOf(x0 + (ev.clientX - rect.left) * cpp), 0), D.duration);
    return { t: t, y: Math.min(Math.max(ev.clientY - rect.top, 0), height) };
  }
  function setDrawn(a, b) {
    // rows within the band (spectrogram or a class's) the drag began in
    const top = Math.floor(a.y / D.band) * D.band;
    const clampRow = (y) => Math.min(Math.max(y - top, 0), D.band - 1);
    const r0 = clampRow(Math.min(a.y, b.y));
    const r1 = clampRow(Math.max(a.y, b.y));
    drawn = { t0: Math.min(a.t, b.t), t1: Math.max(a.t, b.t), y0: top + r0, y1: top + r1 + 1,
              hzHigh: D.row_hz[Math.floor(r0)], hzLow: D.row_hz[Math.floor(r1)] };
  }
  vp.addEventListener("pointerdown", (ev) => {
    vp.setPointerCapture(ev.pointerId);
    if (ev.shiftKey && drawnLink) {
      drawing = boxAt(ev);
      return;
    }
    drag = { x: ev.clientX, x0: x0, moved: false };
    vp.classList.add("dragging");
  });
  vp.addEventListener("pointermove", (ev) => {
    if (drawing) {
      setDrawn(drawing, boxAt(ev));
      drawMarks();
      return;
    }
    if (!drag) return;
    if (Math.abs(ev.clientX - drag.x) > 3) drag.moved = true;
    x0 = drag.x0 - (ev.clientX - drag.x) * cpp;
    render();
  });
  vp.addEventListener("pointerup", (ev) => {
    vp.classList.remove("dragging");
    if (drawing) {
      setDrawn(drawing, boxAt(ev));
      drawing = null;
      drawMarks();
      if (drawn.t1 - drawn.t0 > 0.01) {
        const like = `${D.key}@${drawn.t0.toFixed(3)}-${drawn.t1.toFixed(3)}` +
          `@${Math.round(drawn.hzLow)}-${Math.round(drawn.hzHigh)}`;
        drawnLink.href = "/similar?" + new URLSearchParams({ like: like }).toString();
        drawnLink.textContent = `more like this box (${drawn.t0.toFixed(2)}–` +
          `${drawn.t1.toFixed(2)} s, ${Math.round(drawn.hzLow)}–${Math.round(drawn.hzHigh)} Hz)`;
        drawnLink.hidden = false;
      }
      return;
    }
    if (drag && !drag.moved && audio) { // a click: play from there
      const rect = vp.getBoundingClientRect();
      audio.currentTime = Math.max(0, timeOf(x0 + (ev.clientX - rect.left) * cpp));
      drawPlayhead();
    }
    drag = null;
  });
  for (const row of document.querySelectorAll("#windows tr[data-t]")) {
    row.addEventListener("click", () => {
      const t = parseFloat(row.dataset.t);
      goTo(t, { span: Math.min(D.duration, 3 * D.window) });
      if (audio) audio.currentTime = t;
    });
  }
  if (audio) {
    let raf = 0;
    const tick = () => {
      const x = sx(colOf(audio.currentTime));
      if (follow.checked && (x > 0.9 * W() || x < 0)) {
        x0 = colOf(audio.currentTime) - 0.1 * W() * cpp;
        render();
      } else {
        drawPlayhead();
      }
      if (!audio.paused) raf = requestAnimationFrame(tick);
    };
    audio.addEventListener("play", () => { cancelAnimationFrame(raf); raf = requestAnimationFrame(tick); });
    audio.addEventListener("seeked", drawPlayhead);
    audio.addEventListener("timeupdate", drawPlayhead);
  }
  window.addEventListener("resize", render);

  cpp = maxCpp();
  const m = /^#t=([0-9.]+)$/.exec(location.hash);
  if (m) {
    goTo(parseFloat(m[1]), { span: Math.min(D.duration, 3 * D.window) });
    if (audio) audio.currentTime = parseFloat(m[1]);
  } else {
    render();
  }
  window.echocamView = { render, goTo, state: () => ({ x0, cpp }) };
})();
