// rtlab SliceViewer: browser side (anywidget ES module).
//
// Draws what Python sends for the current slice -- CT (float32 HU), dose (float32 Gy),
// contour / isodose polylines (float32 (row, col) pairs) -- on a <canvas>, and reports user
// actions back: slice changes (slider, mouse wheel) as trait changes, clicks and isodose drags
// as custom messages {type: "click" | "isodose_edit", ...}. No algorithm lives here.

const DRAG_HIT_PX = 6; // how close (CSS px) a press must be to an isodose line to start a drag
const CLICK_SLOP_PX = 4; // a press that moves less than this is a click

// Jet-like colour map: dark blue -> blue -> cyan -> yellow -> red -> dark red (256 entries).
const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  const c = (v) => Math.max(0, Math.min(1, v));
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    lut[3 * i] = 255 * c(1.5 - Math.abs(4 * t - 3));
    lut[3 * i + 1] = 255 * c(1.5 - Math.abs(4 * t - 2));
    lut[3 * i + 2] = 255 * c(1.5 - Math.abs(4 * t - 1));
  }
  return lut;
})();

function lutColor(t) {
  const i = Math.max(0, Math.min(255, Math.round(255 * t)));
  return `rgb(${LUT[3 * i]},${LUT[3 * i + 1]},${LUT[3 * i + 2]})`;
}

// Bytes traits arrive as DataView (ipywidgets 8); make a Float32Array view (copy if unaligned).
function asFloat32(value) {
  if (!value) return null;
  let buf, off, len;
  if (value instanceof DataView || ArrayBuffer.isView(value)) {
    buf = value.buffer; off = value.byteOffset; len = value.byteLength;
  } else if (value instanceof ArrayBuffer) {
    buf = value; off = 0; len = value.byteLength;
  } else {
    return null;
  }
  if (len === 0) return null;
  if (off % 4 !== 0) return new Float32Array(buf.slice(off, off + len));
  return new Float32Array(buf, off, len / 4);
}

function el_(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function distToSegment(px, py, ax, ay, bx, by) {
  const dx = bx - ax, dy = by - ay;
  const l2 = dx * dx + dy * dy;
  let u = l2 > 0 ? ((px - ax) * dx + (py - ay) * dy) / l2 : 0;
  u = Math.max(0, Math.min(1, u));
  const qx = ax + u * dx - px, qy = ay + u * dy - py;
  return Math.sqrt(qx * qx + qy * qy);
}

function render({ model, el }) {
  el.classList.add("rtlab-sv");
  const bar = el_("div", "rtlab-sv-toolbar", el);
  const orient = el_("select", "rtlab-sv-orientation", bar);
  for (const o of ["axial", "coronal", "sagittal"]) {
    const opt = el_("option", "", orient);
    opt.value = o; opt.textContent = o;
  }
  const slider = el_("input", "rtlab-sv-slider", bar);
  slider.type = "range"; slider.min = 0; slider.step = 1;
  const sliceLabel = el_("span", "rtlab-sv-label", bar);
  const doseToggle = el_("label", "rtlab-sv-toggle", bar);
  const doseBox = el_("input", "", doseToggle);
  doseBox.type = "checkbox";
  doseToggle.appendChild(document.createTextNode(" dose"));
  const wl = el_("span", "rtlab-sv-label", bar);

  const body = el_("div", "rtlab-sv-body", el);
  const canvas = el_("canvas", "rtlab-sv-canvas", body);
  const legend = el_("canvas", "rtlab-sv-legend", body);
  const status = el_("div", "rtlab-sv-status", el);
  status.textContent = "\u00a0";
  const off = document.createElement("canvas"); // slice-resolution image
  const offCtx = off.getContext("2d");
  const ctx = canvas.getContext("2d");

  let ct = null, dose = null, pts = null;
  let cssW = 1, cssH = 1;
  let drag = null; // {level, path: [[row, col]...], x0, y0, moved, mode}
  let marker = null;
  let pending = false;
  el.dataset.drawCount = "0";

  const decode = () => {
    ct = asFloat32(model.get("ct_slice"));
    dose = asFloat32(model.get("dose_slice"));
    pts = asFloat32(model.get("contour_points"));
  };

  function layout() {
    const [rows, cols] = model.get("slice_shape");
    const [sr, sc] = model.get("pixel_spacing");
    const size = model.get("display_size");
    const hmm = rows * sr, wmm = cols * sc;
    const s = size / Math.max(hmm, wmm);
    cssW = Math.max(1, Math.round(wmm * s));
    cssH = Math.max(1, Math.round(hmm * s));
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = cssW + "px"; canvas.style.height = cssH + "px";
    if (canvas.width !== Math.round(cssW * dpr)) canvas.width = Math.round(cssW * dpr);
    if (canvas.height !== Math.round(cssH * dpr)) canvas.height = Math.round(cssH * dpr);
    legend.style.height = cssH + "px";
    legend.style.width = "64px";
    legend.width = Math.round(64 * dpr); legend.height = Math.round(cssH * dpr);
  }

  // pixel (row, col) of the slice -> CSS px on the canvas, and back
  const toCss = (row, col) => {
    const [rows, cols] = model.get("slice_shape");
    return [((col + 0.5) * cssW) / cols, ((row + 0.5) * cssH) / rows];
  };
  const toPix = (x, y) => {
    const [rows, cols] = model.get("slice_shape");
    return [(y * rows) / cssH - 0.5, (x * cols) / cssW - 0.5];
  };

  function drawImage() {
    const [rows, cols] = model.get("slice_shape");
    const n = rows * cols;
    if (off.width !== cols) off.width = cols;
    if (off.height !== rows) off.height = rows;
    const img = offCtx.createImageData(cols, rows);
    const px = img.data;
    const w = model.get("window"), lv = model.get("level");
    const lo = lv - w / 2, gscale = 255 / w;
    const showDose = dose && dose.length === n && model.get("dose_visible");
    const dmax = model.get("dose_max") || 1, thr = model.get("dose_threshold");
    const a = model.get("dose_alpha"), a1 = 1 - a;
    const haveCt = ct && ct.length === n;
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      let g = haveCt ? (ct[i] - lo) * gscale : 0;
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      let r = g, gg = g, b = g;
      if (showDose) {
        const d = dose[i];
        if (d >= thr && d > 0) {
          let k = Math.round((d / dmax) * 255);
          k = k > 255 ? 765 : 3 * k;
          r = a1 * g + a * LUT[k]; gg = a1 * g + a * LUT[k + 1]; b = a1 * g + a * LUT[k + 2];
        }
      }
      px[j] = r; px[j + 1] = gg; px[j + 2] = b; px[j + 3] = 255;
    }
    offCtx.putImageData(img, 0, 0);
  }

  function strokePolyline(start, count) {
    ctx.beginPath();
    for (let p = 0; p < count; p++) {
      const [x, y] = toCss(pts[2 * (start + p)], pts[2 * (start + p) + 1]);
      if (p === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
  }

  function drawOverlays() {
    const meta = model.get("contours") || [];
    const dmax = model.get("dose_max") || 1;
    if (pts) {
      for (const c of meta) {
        if (c.kind === "structure") {
          if (!model.get("show_contours")) continue;
          ctx.strokeStyle = c.color; ctx.lineWidth = 1.5; ctx.setLineDash([]);
        } else {
          if (!model.get("show_isodose") || !dose) continue;
          const hot = drag && drag.mode === "isodose" && drag.level === c.level;
          ctx.strokeStyle = lutColor(c.level / dmax);
          ctx.lineWidth = hot ? 3 : 1.25; ctx.setLineDash([4, 2]);
        }
        strokePolyline(c.start, c.count);
      }
      ctx.setLineDash([]);
    }
    if (drag && drag.mode === "isodose" && drag.path.length > 1) {
      ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 2; ctx.beginPath();
      drag.path.forEach(([r, c], i) => {
        const [x, y] = toCss(r, c);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    const sel = model.get("selected_voxel"), fr = model.get("frame") || {};
    if (sel && sel.orientation === fr.orientation && sel.slice_index === fr.slice_index) {
      const [x, y] = toCss(sel.row, sel.col);
      ctx.strokeStyle = "#ffff00"; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x - 6, y); ctx.lineTo(x + 6, y); ctx.moveTo(x, y - 6); ctx.lineTo(x, y + 6);
      ctx.stroke();
    }
  }

  function drawLegend() {
    const lctx = legend.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    lctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    lctx.clearRect(0, 0, 64, cssH);
    if (!dose || !model.get("dose_visible")) { legend.style.visibility = "hidden"; return; }
    legend.style.visibility = "visible";
    const dmax = model.get("dose_max") || 1, thr = model.get("dose_threshold");
    const top = 8, bot = cssH - 8, h = bot - top;
    for (let y = 0; y < h; y++) {
      lctx.fillStyle = lutColor(1 - y / h);
      lctx.fillRect(4, top + y, 14, 1);
    }
    lctx.strokeStyle = "#888"; lctx.strokeRect(4, top, 14, h);
    lctx.fillStyle = "#222"; lctx.font = "10px sans-serif"; lctx.textBaseline = "middle";
    const step = niceStep(dmax / 5);
    for (let v = 0; v <= dmax + 1e-9; v += step) {
      const y = bot - (v / dmax) * h;
      lctx.fillRect(18, y, 4, 1);
      lctx.fillText(v.toFixed(step < 1 ? 1 : 0), 24, y);
    }
    const yt = bot - (thr / dmax) * h;
    lctx.fillStyle = "#000"; lctx.fillRect(2, yt, 18, 1);
    lctx.fillText("Gy", 24, top - 2 < 6 ? 6 : top - 2);
    for (const lv of model.get("isodose_levels_gy") || []) {
      const y = bot - Math.min(1, lv / dmax) * h;
      lctx.strokeStyle = lutColor(lv / dmax); lctx.lineWidth = 2;
      lctx.beginPath(); lctx.moveTo(0, y); lctx.lineTo(4, y); lctx.stroke();
    }
  }

  function niceStep(x) {
    const p = Math.pow(10, Math.floor(Math.log10(x || 1)));
    const m = x / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
  }

  function draw() {
    const t0 = performance.now();
    layout();
    drawImage();
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawOverlays();
    drawLegend();
    updateControls();
    const ms = performance.now() - t0;
    el.dataset.drawMs = ms.toFixed(2);
    const k = (model.get("frame") || {}).slice_index;
    el.dataset.drawnSlice = String(k);
    el.dataset.drawCount = String(Number(el.dataset.drawCount) + 1);
    (globalThis.__rtlab_draws = globalThis.__rtlab_draws || []).push({ ms, slice: k, t: t0 });
  }

  // The controls follow the model at once; the image follows when the slice's data arrive.
  function updateControls() {
    const n = model.get("n_slices"), k = model.get("slice_index");
    slider.max = n - 1; slider.value = k;
    orient.value = model.get("orientation");
    doseBox.checked = model.get("dose_visible");
    doseBox.disabled = !dose;
    sliceLabel.textContent = `${model.get("orientation")} ${k + 1}/${n}`;
    wl.textContent = `W ${Math.round(model.get("window"))} L ${Math.round(model.get("level"))}`;
  }

  // Several traits change together on a slice change: coalesce them into one draw.
  function schedule() {
    if (pending) return;
    pending = true;
    queueMicrotask(() => { pending = false; draw(); });
  }
  const onData = () => { decode(); schedule(); };
  const dataKeys = ["ct_slice", "dose_slice", "contour_points"];
  const viewKeys = ["contours", "frame", "slice_shape", "pixel_spacing", "display_size", "window", "level",
    "dose_visible", "dose_max", "dose_threshold", "dose_alpha", "isodose_levels_gy",
    "show_contours", "show_isodose", "selected_voxel"];
  const controlKeys = ["slice_index", "n_slices", "orientation"];
  for (const k of dataKeys) model.on(`change:${k}`, onData);
  for (const k of viewKeys) model.on(`change:${k}`, schedule);
  for (const k of controlKeys) model.on(`change:${k}`, updateControls);

  // --- controls
  const setSlice = (k) => {
    const n = model.get("n_slices");
    k = Math.max(0, Math.min(n - 1, k));
    if (k !== model.get("slice_index")) { model.set("slice_index", k); model.save_changes(); }
  };
  slider.addEventListener("input", () => setSlice(Number(slider.value)));
  orient.addEventListener("change", () => { model.set("orientation", orient.value); model.save_changes(); });
  doseBox.addEventListener("change", () => { model.set("dose_visible", doseBox.checked); model.save_changes(); });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    setSlice(model.get("slice_index") + (ev.deltaY > 0 ? -1 : 1));
  }, { passive: false });
  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());

  const local = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top];
  };

  function nearestIsodose(x, y) {
    if (!pts || !dose || !model.get("show_isodose")) return null;
    let best = null, bestD = DRAG_HIT_PX;
    for (const c of model.get("contours") || []) {
      if (c.kind !== "isodose") continue;
      let [ax, ay] = toCss(pts[2 * c.start], pts[2 * c.start + 1]);
      for (let p = 1; p < c.count; p++) {
        const [bx, by] = toCss(pts[2 * (c.start + p)], pts[2 * (c.start + p) + 1]);
        const d = distToSegment(x, y, ax, ay, bx, by);
        if (d < bestD) { bestD = d; best = c.level; }
        ax = bx; ay = by;
      }
    }
    return best;
  }

  canvas.addEventListener("pointerdown", (ev) => {
    const [x, y] = local(ev);
    canvas.setPointerCapture(ev.pointerId);
    if (ev.button === 2 || ev.ctrlKey) {
      drag = { mode: "wl", x0: x, y0: y, w0: model.get("window"), l0: model.get("level"), moved: 0, path: [] };
      return;
    }
    const level = nearestIsodose(x, y);
    drag = { mode: level === null ? "click" : "isodose", level, x0: x, y0: y, moved: 0, path: [toPix(x, y)] };
  });
  canvas.addEventListener("pointermove", (ev) => {
    const [x, y] = local(ev);
    const [row, col] = toPix(x, y);
    const [rows, cols] = model.get("slice_shape");
    if (row > -0.5 && col > -0.5 && row < rows - 0.5 && col < cols - 0.5) {
      const i = Math.round(row) * cols + Math.round(col);
      let s = `row ${Math.round(row)} col ${Math.round(col)}`;
      if (ct) s += `  ${ct[i].toFixed(0)} HU`;
      if (dose) s += `  ${dose[i].toFixed(2)} Gy`;
      status.textContent = s;
    }
    if (!drag) return;
    drag.moved = Math.max(drag.moved, Math.hypot(x - drag.x0, y - drag.y0));
    if (drag.mode === "wl") {
      model.set("window", Math.max(1, drag.w0 + 2 * (x - drag.x0)));
      model.set("level", drag.l0 - 2 * (y - drag.y0));
      schedule();
    } else if (drag.mode === "isodose") {
      drag.path.push([row, col]);
      schedule();
    }
  });
  canvas.addEventListener("pointerup", (ev) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    const [x, y] = local(ev);
    const fr = model.get("frame") || {}; // the slice on screen, which the user pointed at
    const base = { orientation: fr.orientation, slice_index: fr.slice_index };
    if (d.mode === "wl") {
      model.save_changes();
    } else if (d.mode === "isodose" && d.moved >= CLICK_SLOP_PX && d.path.length > 1) {
      model.send({ type: "isodose_edit", level: d.level, path: d.path, ...base });
    } else {
      const [row, col] = toPix(x, y);
      model.send({ type: "click", row, col, ...base });
    }
    schedule();
  });
  canvas.addEventListener("pointercancel", () => { drag = null; schedule(); });

  decode();
  draw();
  return () => {
    for (const k of dataKeys) model.off(`change:${k}`, onData);
    for (const k of viewKeys) model.off(`change:${k}`, schedule);
    for (const k of controlKeys) model.off(`change:${k}`, updateControls);
  };
}

export default { render };
