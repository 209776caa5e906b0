// ebmlab MCMC playground: drawing only. Every step is computed by the server
// (ebmlab.samplers) and streamed over the /ws WebSocket.

const $ = (id) => document.getElementById(id);

const COLORS = {
  accept: "#16a34a",
  reject: "#dc2626",
  chain: "#111827",
  sample: "rgba(17, 24, 39, 0.45)",
  contour: "rgba(30, 41, 59, 0.55)",
  hist: "rgba(37, 99, 235, 0.35)",
  histEdge: "rgba(37, 99, 235, 0.8)",
  curve: "#111827",
  traj: "rgba(100, 116, 139, 0.9)",
};
// Light "Blues" ramp for the density heatmap (white -> blue).
const RAMP = [[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156]];
const MAX_DRAWN_CHAINS = 100; // proposal lines are drawn for at most this many chains
const MAX_DRAWN_SAMPLES = 60000; // scatter of the most recent samples
const MAX_SAMPLES = 400000; // client-side sample buffer (points); histograms use all of it

// Server settings (sent with "configure") <-> control ids <-> URL query keys.
const SERVER = [
  ["algorithm", "algorithm", "algorithm", "str"],
  ["target", "target", "target", "str"],
  ["expert1", "expert1", "expert1", "str"],
  ["expert2", "expert2", "expert2", "str"],
  ["step_size", "step-size", "step_size", "num"],
  ["leapfrog_steps", "leapfrog-steps", "leapfrog_steps", "int"],
  ["chains", "chains", "chains", "int"],
  ["seed", "seed", "seed", "int"],
  ["histogram_bins", "histogram-bins", "bins", "int"],
  ["animate_proposal", "animate-proposal", "animate", "bool"],
];
const CLIENT = [
  ["autoplay", "autoplay", "bool"],
  ["autoplay-delay", "delay", "int"],
  ["tweening-delay", "tween", "int"],
  ["steps-per-click", "per_click", "int"],
  ["show-target", "show_target", "bool"],
  ["show-samples", "show_samples", "bool"],
  ["show-histogram", "show_hist", "bool"],
];

const st = {
  ws: null,
  info: null,
  bounds: [[-4, 4], [-4, 4]],
  density: null,
  densityKey: "",
  heat: null, // offscreen canvas with the heatmap
  contours: [], // [[x1a, x2a, x1b, x2b], ...] in data coordinates
  x: [], // current chain positions
  prevX: null,
  frame: null, // last frame (proposal, accepted, trajectory)
  samples: new Float32Array(1 << 16),
  n: 0, // points in samples
  configuring: 0, // configure/reset messages awaiting their reply
  pending: 0, // steps requested but not yet sent
  inFlight: false,
  tween: null, // {start, dur}
  autoplayTimer: null,
  diagnostics: null,
};

// ------------------------------------------------------------------ helpers
function readControl(id, kind) {
  const el = $(id);
  if (kind === "bool") return el.checked;
  if (kind === "str") return el.value;
  const v = Number(el.value);
  return kind === "int" && Number.isFinite(v) ? Math.round(v) : v;
}
function writeControl(id, kind, value) {
  const el = $(id);
  if (kind === "bool") el.checked = value === true || value === "1" || value === "true";
  else el.value = value;
}
function serverSettings() {
  const s = {};
  for (const [key, id, , kind] of SERVER) s[key] = readControl(id, kind);
  return s;
}
function clientInt(id, lo, hi, fallback) {
  const v = Number($(id).value);
  return Number.isFinite(v) ? Math.min(hi, Math.max(lo, Math.round(v))) : fallback;
}
function showError(msg) {
  const el = $("error");
  if (msg) { el.textContent = msg; el.hidden = false; } else { el.textContent = ""; el.hidden = true; }
}
function setStatus(text, ok) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (ok ? "ok" : "bad");
}
function fmt(v, digits) {
  return v === null || v === undefined || !Number.isFinite(v) ? "—" : v.toFixed(digits);
}

// ------------------------------------------------------------------ permalink
function updateURL() {
  const q = new URLSearchParams();
  for (const [, id, key, kind] of SERVER) {
    const v = readControl(id, kind);
    if ((key === "expert1" || key === "expert2") && $("target").value !== "product") continue;
    q.set(key, kind === "bool" ? (v ? "1" : "0") : String(v));
  }
  for (const [id, key, kind] of CLIENT) {
    const v = readControl(id, kind);
    q.set(key, kind === "bool" ? (v ? "1" : "0") : String(v));
  }
  history.replaceState(null, "", "?" + q.toString());
}
function restoreFromURL() {
  const q = new URLSearchParams(location.search);
  for (const [, id, key, kind] of SERVER) if (q.has(key)) writeControl(id, kind, q.get(key));
  for (const [id, key, kind] of CLIENT) if (q.has(key)) writeControl(id, kind, q.get(key));
}

// ------------------------------------------------------------------ canvases
function fitCanvas(canvas) {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  return [w, h, dpr];
}
function toPx(x1, x2, w, h) {
  const [[a, b], [c, d]] = st.bounds;
  return [((x1 - a) / (b - a)) * w, h - ((x2 - c) / (d - c)) * h];
}

function buildHeatmap() {
  const d = st.density;
  if (!d) { st.heat = null; return; }
  const n1 = d.axes[0].length, n2 = d.axes[1].length;
  const c = document.createElement("canvas");
  c.width = n1; c.height = n2;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(n1, n2);
  const max = d.max > 0 ? d.max : 1;
  for (let i = 0; i < n1; i++) {
    for (let j = 0; j < n2; j++) {
      const t = Math.sqrt(Math.min(1, d.density[i][j] / max)) * (RAMP.length - 1);
      const k = Math.min(RAMP.length - 2, Math.floor(t)), f = t - k;
      const p = ((n2 - 1 - j) * n1 + i) * 4; // row 0 of the image is the top (largest x2)
      for (let ch = 0; ch < 3; ch++) img.data[p + ch] = RAMP[k][ch] + f * (RAMP[k + 1][ch] - RAMP[k][ch]);
      img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  st.heat = c;
  // Contours by marching squares on the cell-centre grid.
  st.contours = [];
  const ax = d.axes[0], ay = d.axes[1], g = d.density;
  for (const level of d.levels) {
    for (let i = 0; i < n1 - 1; i++) {
      for (let j = 0; j < n2 - 1; j++) {
        const v = [g[i][j], g[i + 1][j], g[i + 1][j + 1], g[i][j + 1]];
        const idx = (v[0] > level) | ((v[1] > level) << 1) | ((v[2] > level) << 2) | ((v[3] > level) << 3);
        if (idx === 0 || idx === 15) continue;
        const px = [ax[i], ax[i + 1], ax[i + 1], ax[i]], py = [ay[j], ay[j], ay[j + 1], ay[j + 1]];
        const pts = [];
        for (let e = 0; e < 4; e++) {
          const a = e, b = (e + 1) % 4;
          if ((v[a] > level) !== (v[b] > level)) {
            const t = (level - v[a]) / (v[b] - v[a]);
            pts.push([px[a] + t * (px[b] - px[a]), py[a] + t * (py[b] - py[a])]);
          }
        }
        if (pts.length >= 2) st.contours.push([pts[0][0], pts[0][1], pts[1][0], pts[1][1]]);
        if (pts.length === 4) st.contours.push([pts[2][0], pts[2][1], pts[3][0], pts[3][1]]);
      }
    }
  }
}

function drawMain(progress) {
  const canvas = $("main");
  const [w, h, dpr] = fitCanvas(canvas);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  if ($("show-target").checked && st.heat) {
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(st.heat, 0, 0, w, h);
    ctx.strokeStyle = COLORS.contour;
    ctx.lineWidth = 1 * dpr;
    ctx.beginPath();
    for (const [a, b, c, d] of st.contours) {
      const [p1, q1] = toPx(a, b, w, h), [p2, q2] = toPx(c, d, w, h);
      ctx.moveTo(p1, q1); ctx.lineTo(p2, q2);
    }
    ctx.stroke();
  }
  if ($("show-samples").checked && st.n > 0) {
    ctx.fillStyle = COLORS.sample;
    const r = 1.6 * dpr;
    for (let k = Math.max(0, st.n - MAX_DRAWN_SAMPLES); k < st.n; k++) {
      const [p, q] = toPx(st.samples[2 * k], st.samples[2 * k + 1], w, h);
      ctx.fillRect(p - r / 2, q - r / 2, r, r);
    }
  }
  const f = st.frame;
  const animate = $("animate-proposal").checked;
  const t = progress === undefined ? 1 : progress;
  const moveT = Math.min(1, Math.max(0, (t - 0.6) / 0.4)); // chains move in the last 40%
  const growT = Math.min(1, t / 0.6); // proposals grow in the first 60%
  const nDraw = Math.min(st.x.length, MAX_DRAWN_CHAINS);
  if (f && animate && st.prevX) {
    ctx.lineWidth = 1.8 * dpr;
    for (let c = 0; c < Math.min(nDraw, f.proposal.length); c++) {
      const color = f.accepted[c] ? COLORS.accept : COLORS.reject;
      const from = st.prevX[c];
      if (f.trajectory && f.trajectory[c]) {
        const path = f.trajectory[c];
        const upto = Math.max(1, Math.round(growT * (path.length - 1)));
        ctx.strokeStyle = color;
        ctx.beginPath();
        for (let s = 0; s <= upto; s++) {
          const [p, q] = toPx(path[s][0], path[s][1], w, h);
          if (s === 0) ctx.moveTo(p, q); else ctx.lineTo(p, q);
        }
        ctx.stroke();
        for (let s = 1; s < upto; s++) {
          const [p, q] = toPx(path[s][0], path[s][1], w, h);
          ctx.fillStyle = COLORS.traj;
          ctx.beginPath(); ctx.arc(p, q, 1.6 * dpr, 0, 2 * Math.PI); ctx.fill();
        }
      } else {
        const [p0, q0] = toPx(from[0], from[1], w, h);
        const [p1, q1] = toPx(f.proposal[c][0], f.proposal[c][1], w, h);
        ctx.strokeStyle = color;
        ctx.beginPath(); ctx.moveTo(p0, q0); ctx.lineTo(p0 + growT * (p1 - p0), q0 + growT * (q1 - q0)); ctx.stroke();
      }
      if (growT >= 1) {
        const [p1, q1] = toPx(f.proposal[c][0], f.proposal[c][1], w, h);
        ctx.strokeStyle = color;
        ctx.lineWidth = 2 * dpr;
        ctx.beginPath(); ctx.arc(p1, q1, 4 * dpr, 0, 2 * Math.PI); ctx.stroke();
        ctx.lineWidth = 1.8 * dpr;
      }
    }
  }
  // Axis labels: the box's bounds.
  ctx.fillStyle = "#5b6470";
  ctx.font = `${11 * dpr}px system-ui, sans-serif`;
  const [[a1, b1], [a2, b2]] = st.bounds;
  ctx.textBaseline = "bottom"; ctx.textAlign = "left";
  ctx.fillText(`x₁ ∈ [${a1}, ${b1}]   x₂ ∈ [${a2}, ${b2}]`, 6 * dpr, h - 4 * dpr);
  // Current chain positions (tweened from the previous ones).
  for (let c = 0; c < st.x.length; c++) {
    let [a, b] = st.x[c];
    if (st.prevX && st.prevX[c] && t < 1) {
      a = st.prevX[c][0] + moveT * (a - st.prevX[c][0]);
      b = st.prevX[c][1] + moveT * (b - st.prevX[c][1]);
    }
    const [p, q] = toPx(a, b, w, h);
    const big = st.x.length <= MAX_DRAWN_CHAINS;
    ctx.beginPath();
    ctx.arc(p, q, (big ? 4.5 : 2.2) * dpr, 0, 2 * Math.PI);
    ctx.fillStyle = COLORS.chain; ctx.fill();
    if (big) { ctx.lineWidth = 1.5 * dpr; ctx.strokeStyle = "#fff"; ctx.stroke(); }
  }
}

function drawHist(axis) {
  const canvas = $(axis === 0 ? "hist-x" : "hist-y");
  const [w, h, dpr] = fitCanvas(canvas);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  if (!$("show-histogram").checked) return;
  const bins = clientInt("histogram-bins", 2, 200, 40);
  const [lo, hi] = st.bounds[axis];
  const width = (hi - lo) / bins;
  const counts = new Float64Array(bins);
  let inside = 0;
  for (let k = 0; k < st.n; k++) {
    const v = st.samples[2 * k + axis];
    if (v < lo || v > hi) continue;
    counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1;
    inside += 1;
  }
  const dens = Array.from(counts, (c) => (inside ? c / (inside * width) : 0));
  const curve = st.density ? st.density.marginals[axis] : null;
  const grid = st.density ? st.density.axes[axis] : null;
  let top = Math.max(1e-12, ...dens);
  if (curve) top = Math.max(top, ...curve);
  top *= 1.08;
  const len = axis === 0 ? w : h, depth = axis === 0 ? h : w;
  // (pos along axis, height) -> canvas point; x2 histograms grow to the right from the main plot.
  const pt = (u, v) => (axis === 0 ? [u * len, depth - (v / top) * depth] : [(v / top) * depth, len - u * len]);
  ctx.fillStyle = COLORS.hist;
  ctx.strokeStyle = COLORS.histEdge;
  ctx.lineWidth = 1 * dpr;
  for (let b = 0; b < bins; b++) {
    if (!dens[b]) continue;
    const [x0, y0] = pt(b / bins, 0), [x1, y1] = pt((b + 1) / bins, dens[b]);
    ctx.fillRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
  }
  if (curve && $("show-target").checked) {
    ctx.strokeStyle = COLORS.curve;
    ctx.lineWidth = 1.5 * dpr;
    ctx.beginPath();
    for (let i = 0; i < curve.length; i++) {
      const [x, y] = pt((grid[i] - lo) / (hi - lo), curve[i]);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
  }
}

function drawAll(progress) {
  drawMain(progress);
  drawHist(0);
  drawHist(1);
}

// ------------------------------------------------------------------ data
function clearSamples() {
  st.n = 0;
  st.frame = null;
  st.prevX = null;
}
function pushSamples(points) {
  const need = 2 * (st.n + points.length);
  if (need > st.samples.length) {
    if (need <= 2 * MAX_SAMPLES) {
      const grown = new Float32Array(Math.min(2 * MAX_SAMPLES, Math.max(need, 2 * st.samples.length)));
      grown.set(st.samples.subarray(0, 2 * st.n));
      st.samples = grown;
    } else { // keep the most recent MAX_SAMPLES points
      const keep = Math.max(0, MAX_SAMPLES - points.length);
      st.samples.copyWithin(0, 2 * (st.n - keep), 2 * st.n);
      st.n = keep;
    }
  }
  for (const [a, b] of points.slice(-MAX_SAMPLES)) {
    st.samples[2 * st.n] = a; st.samples[2 * st.n + 1] = b; st.n += 1;
  }
}
function showDiagnostics(d) {
  st.diagnostics = d;
  $("num-samples").textContent = String(d.num_samples);
  $("acceptance-rate").textContent = fmt(d.acceptance_rate, 3);
  $("ess").textContent = d.ess === null ? "—" : d.ess.toFixed(1);
  $("rhat").textContent = fmt(d.rhat, 3);
  $("kl").textContent = fmt(d.kl, 3);
  $("caption").textContent = `step ${d.num_steps} · ${st.x.length} chain${st.x.length === 1 ? "" : "s"}` +
    (d.kept_draws < d.num_steps ? ` · diagnostics over the last ${d.kept_draws} draws` : "");
}

async function loadDensity() {
  const s = serverSettings();
  const q = new URLSearchParams({ target: s.target, resolution: "128" });
  if (s.target === "product") { q.set("expert1", s.expert1); q.set("expert2", s.expert2); }
  const key = q.toString();
  if (key === st.densityKey) return;
  st.densityKey = key;
  const r = await fetch("/api/density?" + key);
  if (key !== st.densityKey) return; // a newer request superseded this one
  if (!r.ok) { st.density = null; st.heat = null; st.contours = []; const e = await r.json(); showError(e.detail || "density failed"); drawAll(); return; }
  st.density = await r.json();
  st.bounds = st.density.bounds;
  buildHeatmap();
  drawAll();
}

// ------------------------------------------------------------------ protocol
function send(msg) {
  if (st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(JSON.stringify(msg));
}
// The socket is ordered and the server handles one message at a time, so a
// reply to a step sent before a configure/reset always arrives before the
// "configured" reply, which then clears what it drew.
function configure() {
  st.pending = 0;
  st.configuring += 1;
  send({ type: "configure", ...serverSettings() });
  updateIdle();
}
function reset() {
  st.pending = 0;
  st.configuring += 1;
  send({ type: "reset" });
  updateIdle();
}
function pump() {
  if (st.inFlight || st.tween || st.pending <= 0) { updateIdle(); return; }
  const n = Math.min(200, st.pending);
  st.pending -= n;
  st.inFlight = true;
  send({ type: "step", n });
  updateIdle();
}
function updateIdle() {
  const idle = !st.inFlight && !st.tween && st.pending === 0 && st.configuring === 0;
  document.body.dataset.idle = idle ? "1" : "0";
}
function scheduleAutoplay() {
  clearTimeout(st.autoplayTimer);
  if (!$("autoplay").checked) return;
  st.autoplayTimer = setTimeout(() => {
    if ($("autoplay").checked && !st.inFlight && !st.tween && st.pending === 0) {
      st.pending += clientInt("steps-per-click", 1, 200, 1);
      pump();
    } else scheduleAutoplay();
  }, clientInt("autoplay-delay", 0, 60000, 100));
}

function onFrames(msg) {
  st.inFlight = false;
  if (msg.error) showError(msg.error);
  const frames = msg.frames;
  if (frames.length) {
    for (let i = 0; i < frames.length - 1; i++) pushSamples(frames[i].x);
    const last = frames[frames.length - 1];
    st.prevX = frames.length > 1 ? frames[frames.length - 2].x : st.x;
    st.frame = last;
    st.x = last.x;
    const dur = clientInt("tweening-delay", 0, 60000, 0);
    if (dur > 0 && document.visibilityState === "visible") {
      const tween = { start: performance.now(), dur };
      st.tween = tween;
      const tick = (now) => {
        if (st.tween !== tween) return; // cancelled by a reset/configure
        const p = Math.min(1, (now - tween.start) / tween.dur);
        drawMain(p);
        if (p < 1) requestAnimationFrame(tick);
        else { st.tween = null; pushSamples(last.x); showDiagnostics(msg.diagnostics); drawAll(); pump(); scheduleAutoplay(); }
      };
      requestAnimationFrame(tick);
      updateIdle();
      return;
    }
    pushSamples(last.x);
  }
  showDiagnostics(msg.diagnostics);
  drawAll();
  pump();
  scheduleAutoplay();
}

function onMessage(ev) {
  const msg = JSON.parse(ev.data);
  if (msg.type === "error") {
    showError(msg.message);
    if (msg.reply_to === "step") { st.inFlight = false; st.pending = 0; }
    else if (msg.reply_to === "configure" || msg.reply_to === "reset") st.configuring = Math.max(0, st.configuring - 1);
    else if (!msg.reply_to) { st.inFlight = false; st.pending = 0; st.configuring = 0; } // unparsable / rate-limited
    updateIdle();
    return;
  }
  if (msg.type === "configured") {
    st.configuring = Math.max(0, st.configuring - 1);
    showError("");
    if (msg.reset) { st.tween = null; clearSamples(); st.x = msg.x; }
    st.bounds = msg.bounds;
    showDiagnostics(msg.diagnostics);
    drawAll();
    updateIdle();
    scheduleAutoplay();
  } else if (msg.type === "frames") {
    onFrames(msg);
  } else if (msg.type === "export") {
    const blob = msg.format === "csv"
      ? new Blob([msg.data], { type: "text/csv" })
      : new Blob([Uint8Array.from(atob(msg.data), (c) => c.charCodeAt(0))], { type: "application/octet-stream" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = msg.filename;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws`);
  st.ws = ws;
  ws.onopen = () => { setStatus("connected", true); configure(); document.body.dataset.ready = "1"; };
  ws.onmessage = onMessage;
  ws.onclose = () => {
    document.body.dataset.ready = "0";
    setStatus("disconnected — retrying", false);
    setTimeout(connect, 1500);
  };
}

// ------------------------------------------------------------------ controls
function syncVisibility() {
  const algo = $("algorithm").value;
  $("experts").hidden = $("target").value !== "product";
  for (const el of document.querySelectorAll(".hmc-only")) el.hidden = algo !== "hmc";
  $("step-size").disabled = algo === "rejection";
  $("step-size-label").textContent = algo === "rwmh" ? "Proposal scale σ" : "Step size ε";
}

function fillTargets(info) {
  const opts = (sel, withProduct) => {
    sel.innerHTML = "";
    const groups = [["Analytic targets", info.targets.filter((t) => t.analytic)],
                    ["Trained models", info.targets.filter((t) => !t.analytic)]];
    for (const [label, list] of groups) {
      if (!list.length) continue;
      const g = document.createElement("optgroup");
      g.label = label;
      for (const t of list) { const o = document.createElement("option"); o.value = o.textContent = t.name; g.appendChild(o); }
      sel.appendChild(g);
    }
    if (withProduct) {
      const o = document.createElement("option");
      o.value = info.product; o.textContent = "Product of two experts";
      sel.appendChild(o);
    }
  };
  opts($("target"), true);
  opts($("expert1"), false);
  opts($("expert2"), false);
  for (const [key, id, , kind] of SERVER) writeControl(id, kind, info.defaults[key]);
}

async function main() {
  const r = await fetch("/api/targets");
  st.info = await r.json();
  fillTargets(st.info);
  restoreFromURL();
  syncVisibility();
  updateURL();
  await loadDensity();

  const serverIds = SERVER.map(([, id]) => id);
  for (const id of serverIds) {
    $(id).addEventListener("change", () => {
      syncVisibility();
      updateURL();
      if (["target", "expert1", "expert2"].includes(id)) loadDensity();
      configure();
      if (id === "histogram-bins") drawAll();
    });
  }
  for (const [id] of CLIENT) {
    $(id).addEventListener("change", () => {
      updateURL();
      if (id === "autoplay") { if ($("autoplay").checked) { pump(); scheduleAutoplay(); } else clearTimeout(st.autoplayTimer); }
      drawAll();
    });
  }
  $("step").addEventListener("click", () => {
    st.pending += clientInt("steps-per-click", 1, 200, 1);
    pump();
  });
  $("reset").addEventListener("click", () => { clearSamples(); reset(); drawAll(); });
  $("permalink").addEventListener("click", async () => {
    updateURL();
    try { await navigator.clipboard.writeText(location.href); $("hint").textContent = "Permalink copied to the clipboard."; }
    catch { $("hint").textContent = "Permalink: " + location.href; }
  });
  $("export-csv").addEventListener("click", () => send({ type: "export", format: "csv" }));
  $("export-npz").addEventListener("click", () => send({ type: "export", format: "npz" }));
  window.addEventListener("resize", () => drawAll());
  connect();
}

// Read-only hook for tests and debugging in the console.
window.ebmlabPlayground = {
  samples: () => Array.from(st.samples.subarray(0, 2 * st.n)),
  bounds: () => st.bounds,
  chains: () => st.x,
};

main().catch((err) => { showError(String(err)); setStatus("failed to start", false); });
