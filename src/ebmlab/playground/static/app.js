// ebmlab MCMC playground: drawing only. Every step is computed by the server
// (ebmlab.samplers) and streamed over the /ws WebSocket. Side by side, a second
// pane ("-b" ids) draws the second sampler the server runs with the same budget.

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
  tree: "#0f766e", // a NUTS tree's leapfrog path (teal); divergent trees use the reject colour
  leaf: "rgba(15, 118, 110, 0.85)",
  swap: "#d97706", // accepted parallel-tempering swaps
};
// Light "Blues" ramp for the density heatmap (white -> blue).
const RAMP = [[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156]];
const MAX_DRAWN_CHAINS = 100; // proposal lines are drawn for at most this many chains
const MAX_DRAWN_SAMPLES = 60000; // scatter of the most recent samples
const MAX_SAMPLES = 400000; // client-side sample buffer (points); histograms use all of it

// Server settings (sent with "configure") <-> control ids <-> URL query keys.
const SERVER = [
  ["algorithm", "algorithm", "algorithm", "str"],
  ["compare", "compare-algorithm", "compare", "str"],
  ["target", "target", "target", "str"],
  ["expert1", "expert1", "expert1", "str"],
  ["expert2", "expert2", "expert2", "str"],
  ["step_size", "step-size", "step_size", "num"],
  ["leapfrog_steps", "leapfrog-steps", "leapfrog_steps", "int"],
  ["chains", "chains", "chains", "int"],
  ["seed", "seed", "seed", "int"],
  ["histogram_bins", "histogram-bins", "bins", "int"],
  ["animate_proposal", "animate-proposal", "animate", "bool"],
  ["num_levels", "num-levels", "levels", "int"],
  ["sigma_max", "sigma-max", "sigma_max", "num"],
  ["sigma_min", "sigma-min", "sigma_min", "num"],
  ["steps_per_level", "steps-per-level", "per_level", "int"],
  ["eps", "eps", "eps", "num"],
  ["max_tree_depth", "max-tree-depth", "tree_depth", "int"],
  ["pt_base", "pt-base", "pt_base", "str"],
  ["num_temperatures", "num-temperatures", "temps", "int"],
  ["max_temperature", "max-temperature", "max_temp", "num"],
  ["sde", "sde", "sde", "str"],
  ["diffusion_method", "diffusion-method", "dmethod", "str"],
  ["diffusion_steps", "diffusion-steps", "dsteps", "int"],
];
// An algorithm's own settings go into the permalink only when a sampler uses it.
const OWN_KEYS = {
  annealed: ["num_levels", "sigma_max", "sigma_min", "steps_per_level", "eps"],
  nuts: ["max_tree_depth"],
  pt: ["pt_base", "num_temperatures", "max_temperature"],
  diffusion: ["sde", "diffusion_method", "diffusion_steps"],
};
const CLIENT = [
  ["autoplay", "autoplay", "bool"],
  ["autoplay-delay", "delay", "int"],
  ["tweening-delay", "tween", "int"],
  ["steps-per-click", "per_click", "int"],
  ["show-target", "show_target", "bool"],
  ["show-samples", "show_samples", "bool"],
  ["show-histogram", "show_hist", "bool"],
  ["show-replicas", "show_replicas", "bool"],
];
const STRIP_RES = 48; // grid of each tempered density in the parallel-tempering strip

// One pane per sampler: its canvases and what it draws.
function makePane(suffix, label) {
  return {
    suffix, label,
    algorithm: "",
    x: [], // current chain positions
    prevX: null,
    frame: null, // last frame (proposal, accepted, trajectory)
    samples: new Float32Array(1 << 16),
    n: 0, // points in samples
    diagnostics: null,
  };
}
const panes = [makePane("", "A"), makePane("-b", "B")];

const st = {
  ws: null,
  info: null,
  bounds: [[-4, 4], [-4, 4]],
  density: null,
  densityKey: "",
  densityNote: "", // why there is no density (a score model has no energy)
  heat: null, // offscreen canvas with the heatmap
  contours: [], // [[x1a, x2a, x1b, x2b], ...] in data coordinates
  compare: false, // the server runs a second sampler (pane B)
  configuring: 0, // configure/reset messages awaiting their reply
  pending: 0, // steps requested but not yet sent
  inFlight: false,
  sent: 0, // steps asked for by the message in flight
  generation: 0, // configure/reset count: a step sent before one is not continued after it
  sentGeneration: 0,
  tween: null, // {start, dur}
  autoplayTimer: null,
  tempered: new Map(), // "density key|T" -> offscreen heatmap canvas of p^(1/T), or "loading"
};
const activePanes = () => (st.compare ? panes : [panes[0]]);

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
    if (key === "compare" && !v) continue;
    const owner = Object.keys(OWN_KEYS).find((a) => OWN_KEYS[a].includes(key));
    if (owner && !uses(owner)) continue;
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

// An offscreen canvas, one pixel per grid cell, of a density from /api/density.
function heatCanvas(d) {
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
  return c;
}

function buildHeatmap() {
  const d = st.density;
  if (!d) { st.heat = null; return; }
  const n1 = d.axes[0].length, n2 = d.axes[1].length;
  st.heat = heatCanvas(d);
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

function uses(algorithm) {
  return $("algorithm").value === algorithm || $("compare-algorithm").value === algorithm;
}
function algorithmName(value) {
  const o = $("algorithm").querySelector(`option[value="${value}"]`);
  const name = o ? o.textContent : value;
  if (value === "pt") return `${name} (${$("pt-base").selectedOptions[0].textContent})`;
  return name;
}
// Chains that left the box (reverse diffusion starts from a wide prior) are drawn on its edge.
function clampPx(p, q, w, h, r) {
  return [Math.min(w - r, Math.max(r, p)), Math.min(h - r, Math.max(r, q))];
}

// A NUTS tree (lecture view): the leapfrog path from the leftmost to the rightmost leaf, the leaves as
// dots, growing outwards from the start point; the start (square) and the chosen point (ring).
function drawTree(ctx, path, start, chosen, divergent, growT, w, h, dpr) {
  if (!path || !path.length) return;
  let s = 0, best = Infinity; // the start point's row: the leaf nearest the previous position
  for (let i = 0; i < path.length; i++) {
    const d = (path[i][0] - start[0]) ** 2 + (path[i][1] - start[1]) ** 2;
    if (d < best) { best = d; s = i; }
  }
  const lo = Math.round(s - growT * s), hi = Math.round(s + growT * (path.length - 1 - s));
  const color = divergent ? COLORS.reject : COLORS.tree;
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.6 * dpr;
  ctx.beginPath();
  for (let i = lo; i <= hi; i++) {
    const [p, q] = toPx(path[i][0], path[i][1], w, h);
    if (i === lo) ctx.moveTo(p, q); else ctx.lineTo(p, q);
  }
  ctx.stroke();
  ctx.fillStyle = divergent ? COLORS.reject : COLORS.leaf;
  for (let i = lo; i <= hi; i++) {
    const [p, q] = toPx(path[i][0], path[i][1], w, h);
    ctx.beginPath(); ctx.arc(p, q, 2.1 * dpr, 0, 2 * Math.PI); ctx.fill();
  }
  const [p0, q0] = toPx(start[0], start[1], w, h);
  const a = 4.5 * dpr;
  ctx.lineWidth = 1.8 * dpr;
  ctx.strokeStyle = COLORS.chain;
  ctx.fillStyle = "#fff";
  ctx.fillRect(p0 - a, q0 - a, 2 * a, 2 * a);
  ctx.strokeRect(p0 - a, q0 - a, 2 * a, 2 * a);
  if (growT >= 1 && chosen) {
    const [p1, q1] = toPx(chosen[0], chosen[1], w, h);
    ctx.strokeStyle = color;
    ctx.lineWidth = 2.2 * dpr;
    ctx.beginPath(); ctx.arc(p1, q1, 5.5 * dpr, 0, 2 * Math.PI); ctx.stroke();
  }
}

function drawMain(pane, progress) {
  const canvas = $("main" + pane.suffix);
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
  } else if ($("show-target").checked && st.densityNote) {
    ctx.fillStyle = "#8b949e";
    ctx.font = `${12 * dpr}px system-ui, sans-serif`;
    ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.fillText("no density to draw: a score model has no energy", w / 2, h / 2);
  }
  if ($("show-samples").checked && pane.n > 0) {
    ctx.fillStyle = COLORS.sample;
    const r = 1.6 * dpr;
    for (let k = Math.max(0, pane.n - MAX_DRAWN_SAMPLES); k < pane.n; k++) {
      const [p, q] = toPx(pane.samples[2 * k], pane.samples[2 * k + 1], w, h);
      ctx.fillRect(p - r / 2, q - r / 2, r, r);
    }
  }
  const f = pane.frame;
  const animate = $("animate-proposal").checked;
  const t = progress === undefined ? 1 : progress;
  const moveT = Math.min(1, Math.max(0, (t - 0.6) / 0.4)); // chains move in the last 40%
  const growT = Math.min(1, t / 0.6); // proposals grow in the first 60%
  const nDraw = Math.min(pane.x.length, MAX_DRAWN_CHAINS);
  if (f && animate && pane.prevX && f.tree) {
    for (let c = 0; c < Math.min(nDraw, f.tree.length); c++) {
      drawTree(ctx, f.tree[c], pane.prevX[c], f.proposal[c], f.divergent && f.divergent[c], growT, w, h, dpr);
    }
  } else if (f && animate && pane.prevX && pane.algorithm !== "diffusion") {
    ctx.lineWidth = 1.8 * dpr;
    for (let c = 0; c < Math.min(nDraw, f.proposal.length); c++) {
      const color = f.accepted[c] ? COLORS.accept : COLORS.reject;
      const from = pane.prevX[c];
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
  for (let c = 0; c < pane.x.length; c++) {
    let [a, b] = pane.x[c];
    if (pane.prevX && pane.prevX[c] && t < 1) {
      a = pane.prevX[c][0] + moveT * (a - pane.prevX[c][0]);
      b = pane.prevX[c][1] + moveT * (b - pane.prevX[c][1]);
    }
    const big = pane.x.length <= MAX_DRAWN_CHAINS;
    const r = (big ? 4.5 : 2.2) * dpr;
    let [p, q] = toPx(a, b, w, h);
    const outside = p < 0 || p > w || q < 0 || q > h;
    if (outside) [p, q] = clampPx(p, q, w, h, r);
    ctx.globalAlpha = outside ? 0.35 : 1;
    ctx.beginPath();
    ctx.arc(p, q, r, 0, 2 * Math.PI);
    ctx.fillStyle = COLORS.chain; ctx.fill();
    if (big) { ctx.lineWidth = 1.5 * dpr; ctx.strokeStyle = "#fff"; ctx.stroke(); }
    ctx.globalAlpha = 1;
  }
  if (pane.algorithm === "diffusion" && pane.diagnostics && pane.diagnostics.diffusion) {
    const dd = pane.diagnostics.diffusion; // the reverse time and noise level, top left
    ctx.font = `600 ${12 * dpr}px system-ui, sans-serif`;
    ctx.textAlign = "left"; ctx.textBaseline = "top";
    const label = dd.done ? `t = ${fmtG(dd.t)} · done: the chains stay (Reset to run again)`
                          : `t = ${fmtG(dd.t)} · σ(t) = ${fmtG(dd.sigma)}`;
    ctx.fillStyle = "rgba(255, 255, 255, 0.8)";
    ctx.fillRect(4 * dpr, 4 * dpr, ctx.measureText(label).width + 10 * dpr, 18 * dpr);
    ctx.fillStyle = "#1f2328";
    ctx.fillText(label, 9 * dpr, 7 * dpr);
  }
}

// ------------------------------------------------------------------ parallel tempering strip
function temperedKey(t) { return `${st.densityKey}|${t}`; }
// Fetch the tempered densities p^(1/T) of the ladder the strip shows (computed by the server, cached there too).
function ensureTempered(temps) {
  if (!st.density || !temps) return;
  for (const t of temps) {
    const key = temperedKey(t);
    if (st.tempered.has(key)) continue;
    st.tempered.set(key, "loading");
    const q = new URLSearchParams(st.densityKey);
    q.set("resolution", String(STRIP_RES)); q.set("temperature", String(t));
    fetch("/api/density?" + q.toString()).then((r) => (r.ok ? r.json() : null)).then((d) => {
      if (d) { st.tempered.set(key, heatCanvas(d)); drawStrips(); } else st.tempered.delete(key);
    }).catch(() => st.tempered.delete(key));
  }
}
// Panel rectangles of the strip, in canvas pixels: one per temperature, one row (two for K > 8).
function stripLayout(k, w, dpr) {
  const cols = k > 8 ? Math.ceil(k / 2) : k, rows = Math.ceil(k / cols);
  const gap = 16 * dpr, label = 15 * dpr, below = 15 * dpr;
  const size = Math.min(140 * dpr, (w - gap * (cols - 1)) / cols);
  const left = (w - (cols * size + gap * (cols - 1))) / 2;
  const rects = [];
  for (let i = 0; i < k; i++) {
    const r = Math.floor(i / cols), c = i % cols;
    rects.push({ x: left + c * (size + gap), y: r * (label + size + below) + label, size });
  }
  return { rects, gap, height: rows * (label + size + below) };
}
function paneTemperatures(pane) {
  const f = pane.frame;
  if (f && f.temperatures) return f.temperatures;
  const d = pane.diagnostics;
  return d && d.tempering ? d.tempering.temperatures : null;
}
function drawStrip(pane) {
  const canvas = $("pt-strip" + pane.suffix);
  if (canvas.hidden) return;
  const temps = paneTemperatures(pane);
  if (!temps) return;
  ensureTempered(temps);
  const k = temps.length;
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.getBoundingClientRect().width;
  const lay0 = stripLayout(k, width * dpr, dpr);
  canvas.style.height = `${lay0.height / dpr}px`;
  const [w] = fitCanvas(canvas);
  const { rects, gap } = stripLayout(k, w, dpr);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const f = pane.frame;
  const m = f && f.replicas ? f.replicas[0].length : Math.min(pane.x.length, 200);
  const replicas = f && f.replicas ? f.replicas : temps.map(() => pane.x.slice(0, m)); // init: all at x
  const swaps = f && f.swaps ? f.swaps : null;
  const rates = pane.diagnostics && pane.diagnostics.tempering ? pane.diagnostics.tempering.swap_rates : [];
  const [[a1, b1], [a2, b2]] = st.bounds;
  const px = (r, x1, x2) => [r.x + ((x1 - a1) / (b1 - a1)) * r.size, r.y + r.size - ((x2 - a2) / (b2 - a2)) * r.size];
  const rad = (m > 100 ? 1.6 : 2.6) * dpr;
  for (let k0 = 0; k0 < k; k0++) {
    const r = rects[k0];
    const heat = st.tempered.get(temperedKey(temps[k0]));
    if ($("show-target").checked && heat && heat !== "loading") {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heat, r.x, r.y, r.size, r.size);
    }
    ctx.strokeStyle = "#d8dde3"; ctx.lineWidth = 1 * dpr;
    ctx.strokeRect(r.x, r.y, r.size, r.size);
    ctx.fillStyle = k0 === 0 ? "#1f2328" : "#5b6470";
    ctx.font = `${k0 === 0 ? "600 " : ""}${11 * dpr}px system-ui, sans-serif`;
    ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    ctx.fillText(`T = ${fmtG(temps[k0])}`, r.x + r.size / 2, r.y - 2 * dpr);
    ctx.save();
    ctx.beginPath(); ctx.rect(r.x, r.y, r.size, r.size); ctx.clip();
    const rows = replicas[k0] || [];
    for (let c = 0; c < rows.length; c++) {
      const [p, q] = px(r, rows[c][0], rows[c][1]);
      ctx.fillStyle = COLORS.chain;
      ctx.beginPath(); ctx.arc(p, q, rad, 0, 2 * Math.PI); ctx.fill();
    }
    // replicas that arrived by an accepted swap with a neighbour: ringed in the swap colour
    if (swaps) {
      ctx.strokeStyle = COLORS.swap; ctx.lineWidth = 1.8 * dpr;
      for (let c = 0; c < rows.length; c++) {
        const swapped = (k0 > 0 && swaps[k0 - 1][c]) || (k0 < k - 1 && swaps[k0][c]);
        if (!swapped) continue;
        const [p, q] = px(r, rows[c][0], rows[c][1]);
        ctx.beginPath(); ctx.arc(p, q, rad + 2.6 * dpr, 0, 2 * Math.PI); ctx.stroke();
      }
    }
    ctx.restore();
  }
  // between adjacent panels: the swaps accepted at this step (a double arrow and their count), and the pair's rate
  for (let k0 = 0; k0 < k - 1; k0++) {
    const r = rects[k0], n = rects[k0 + 1];
    const sameRow = Math.abs(r.y - n.y) < 1;
    const cx = sameRow ? (r.x + r.size + n.x) / 2 : r.x + r.size + gap / 2;
    const cy = r.y + r.size / 2;
    const count = swaps ? swaps[k0].reduce((acc, v) => acc + (v ? 1 : 0), 0) : 0;
    if (count > 0) {
      ctx.fillStyle = COLORS.swap;
      ctx.fillRect(cx - gap / 2 + 2 * dpr, r.y, gap - 4 * dpr, r.size);
      ctx.fillStyle = "#fff";
      ctx.font = `700 ${11 * dpr}px system-ui, sans-serif`;
      ctx.textAlign = "center"; ctx.textBaseline = "middle";
      ctx.fillText("⇄", cx, cy - 8 * dpr);
      ctx.font = `600 ${9 * dpr}px system-ui, sans-serif`;
      ctx.fillText(String(count), cx, cy + 8 * dpr);
    }
    const rate = rates[k0];
    if (rate !== null && rate !== undefined) {
      ctx.fillStyle = "#5b6470";
      ctx.font = `${9.5 * dpr}px system-ui, sans-serif`;
      ctx.textAlign = "center"; ctx.textBaseline = "top";
      ctx.fillText(rate.toFixed(2), cx, r.y + r.size + 3 * dpr);
    }
  }
}
// Which panes show the strip (before anything is drawn: the main plot shrinks to leave it room).
function layoutStrips() {
  for (const pane of panes) {
    const show = activePanes().includes(pane) && pane.algorithm === "pt" && $("show-replicas").checked;
    $("pt-strip" + pane.suffix).hidden = !show;
    $("pane-" + pane.label.toLowerCase()).classList.toggle("with-strip", show);
  }
}
function drawStrips() {
  for (const pane of activePanes()) drawStrip(pane);
}

function drawHist(pane, axis) {
  const canvas = $((axis === 0 ? "hist-x" : "hist-y") + pane.suffix);
  // The x2 histogram is as tall as its main canvas (set explicitly: a canvas keeps its old
  // drawing-buffer height as intrinsic size, which would stretch the grid row on a relayout).
  if (axis === 1) canvas.style.height = `${$("main" + pane.suffix).getBoundingClientRect().height}px`;
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
  for (let k = 0; k < pane.n; k++) {
    const v = pane.samples[2 * k + axis];
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
  layoutStrips();
  for (const pane of activePanes()) {
    drawMain(pane, progress);
    drawHist(pane, 0);
    drawHist(pane, 1);
  }
  drawStrips();
}

// ------------------------------------------------------------------ data
function clearSamples() {
  for (const pane of panes) {
    pane.n = 0;
    pane.frame = null;
    pane.prevX = null;
  }
}
function pushSamples(pane, points) {
  const need = 2 * (pane.n + points.length);
  if (need > pane.samples.length) {
    if (need <= 2 * MAX_SAMPLES) {
      const grown = new Float32Array(Math.min(2 * MAX_SAMPLES, Math.max(need, 2 * pane.samples.length)));
      grown.set(pane.samples.subarray(0, 2 * pane.n));
      pane.samples = grown;
    } else { // keep the most recent MAX_SAMPLES points
      const keep = Math.max(0, MAX_SAMPLES - points.length);
      pane.samples.copyWithin(0, 2 * (pane.n - keep), 2 * pane.n);
      pane.n = keep;
    }
  }
  for (const [a, b] of points.slice(-MAX_SAMPLES)) {
    pane.samples[2 * pane.n] = a; pane.samples[2 * pane.n + 1] = b; pane.n += 1;
  }
}
function fmtG(v) {
  return v === null || v === undefined || !Number.isFinite(v) ? "—" : String(Number(v.toPrecision(3)));
}
function sigmaText(d) {
  return d.sigma === null || d.sigma === undefined ? "—" : `${Number(d.sigma.toPrecision(3))} (${d.level}/${d.num_levels})`;
}
function showDiagnostics(pane, d) {
  pane.diagnostics = d;
  const s = pane.suffix;
  $("num-samples" + s).textContent = String(d.num_samples);
  $("acceptance-rate" + s).textContent = fmt(d.acceptance_rate, 3);
  $("ess" + s).textContent = d.ess === null ? "—" : d.ess.toFixed(1);
  $("rhat" + s).textContent = fmt(d.rhat, 3);
  $("kl" + s).textContent = fmt(d.kl, 3);
  $("sigma" + s).textContent = sigmaText(d);
  const nuts = d.nuts || {};
  $("tree-depth" + s).textContent = fmt(nuts.mean_tree_depth, 2);
  $("grad-evals" + s).textContent = fmt(nuts.grad_evals_per_step, 1);
  $("divergences" + s).textContent = d.nuts ? String(nuts.divergences) : "—";
  const pt = d.tempering;
  const tag = st.compare ? `${pane.label}: ` : "";
  $("round-trips" + s).textContent = pt ? String(pt.round_trips) : "—";
  $("barrier" + s).textContent = pt ? fmt(pt.barrier, 2) : "—";
  $("ladder" + s).textContent = pt
    ? tag + pt.temperatures.map(fmtG).join(" · ") +
      (pt.adapting ? `  (adapting: round ${pt.rounds_done + 1}/${pt.adapt_rounds})` : pt.adapt_rounds ? "  (frozen)" : "")
    : "—";
  $("swap-rates" + s).textContent = pt ? tag + pt.swap_rates.map((r) => fmt(r, 2)).join(" · ") : "—";
  const df = d.diffusion;
  $("diffusion-t" + s).textContent = df ? `${fmtG(df.t)} (${df.step}/${df.num_steps})` : "—";
  $("diffusion-sigma" + s).textContent = df ? fmtG(df.sigma) : "—";
}
function updateCaption() {
  const d = panes[0].diagnostics;
  if (!d) return;
  const n = panes[0].x.length;
  let text = `step ${d.num_steps} · ${n} chain${n === 1 ? "" : "s"}`;
  if (st.compare) text += " each, same seed and budget";
  const annealed = activePanes().map((p) => p.diagnostics).find((x) => x && x.sigma !== null && x.sigma !== undefined);
  if (annealed) {
    text += annealed.level < annealed.num_levels
      ? ` · annealing: σ = ${Number(annealed.sigma.toPrecision(3))}, level ${annealed.level}/${annealed.num_levels}` +
        " (draws are kept from the last level on)"
      : ` · last noise level σ = ${Number(annealed.sigma.toPrecision(3))}: diagnostics over its ${annealed.kept_draws} draws`;
  } else if (d.diffusion) {
    const df = d.diffusion;
    text = `reverse ${df.sde.toUpperCase()} diffusion (${df.method}) · ${n} chain${n === 1 ? "" : "s"} · ` +
      (df.done ? `t = ${fmtG(df.t)} reached after ${df.num_steps} steps: the chains are samples and stay (Reset to run again)`
               : `t = ${fmtG(df.t)}, σ(t) = ${fmtG(df.sigma)}, step ${df.step}/${df.num_steps} (from noise to the target)`);
  } else if (d.kept_draws < d.num_steps) text += ` · diagnostics over the last ${d.kept_draws} draws`;
  const pt = activePanes().map((p) => p.diagnostics).find((x) => x && x.tempering);
  if (pt && pt.tempering.adapting) {
    text += ` · PT ladder adapting (round ${pt.tempering.rounds_done + 1}/${pt.tempering.adapt_rounds}, frozen after step ${pt.tempering.num_adapt_steps})`;
  }
  if (pt && $("show-replicas").checked) text += " · below: the replicas at each temperature over p^(1/T), ⇄ swaps accepted at this step, swap rates";
  if (st.densityNote) text += ` · ${st.densityNote}`;
  $("caption").textContent = text;
}
function layoutPanes() {
  $("panes").classList.toggle("two", st.compare);
  $("pane-b").hidden = !st.compare;
  $("title-a").hidden = !st.compare;
  $("diag").classList.toggle("two", st.compare);
  for (const pane of panes) {
    const title = $("title-" + pane.label.toLowerCase());
    title.innerHTML = "";
    const tag = document.createElement("span");
    tag.className = "tag"; tag.textContent = pane.label;
    title.append(tag, algorithmName(pane.algorithm));
    $("head-" + pane.label.toLowerCase()).textContent = `${pane.label} · ${pane.algorithm}`;
  }
  const running = new Set(activePanes().map((p) => p.algorithm));
  const rows = { "sigma-row": "annealed", "nuts-row": "nuts", "pt-row": "pt", "diffusion-row": "diffusion" };
  for (const el of document.querySelectorAll("#diag dt, #diag dd")) {
    const row = Object.keys(rows).find((c) => el.classList.contains(c));
    el.hidden = (el.classList.contains("compare-only") && !st.compare) || (row !== undefined && !running.has(rows[row]));
  }
  const only = running.size === 1 ? [...running][0] : "";
  $("legend-acc").textContent = only === "nuts" ? "tree" : "accepted";
  $("legend-rej").textContent = only === "nuts" ? "divergent" : "rejected";
  for (const id of ["legend-acc", "legend-rej"]) $(id).parentElement.hidden = only === "diffusion"; // nothing is proposed
  $("legend-acc").previousElementSibling.style.background = only === "nuts" ? COLORS.tree : "";
}

async function loadDensity() {
  const s = serverSettings();
  const info = targetInfo();
  if (info && !info.density) { // a score model: no energy, so no density or marginal curves
    st.densityKey = "score:" + s.target;
    st.density = null; st.heat = null; st.contours = [];
    st.bounds = info.bounds;
    st.densityNote = `${s.target} is a ${info.kind}: no density to draw`;
    updateCaption();
    drawAll();
    return;
  }
  st.densityNote = "";
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
  st.generation += 1;
  st.configuring += 1;
  send({ type: "configure", ...serverSettings() });
  updateIdle();
}
function reset() {
  st.pending = 0;
  st.generation += 1;
  st.configuring += 1;
  send({ type: "reset" });
  updateIdle();
}
function pump() {
  if (st.inFlight || st.tween || st.pending <= 0) { updateIdle(); return; }
  const n = Math.min(200, st.pending);
  st.pending -= n;
  st.inFlight = true;
  st.sent = n;
  st.sentGeneration = st.generation;
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

// Take a pane's frames: all but the last go to its samples (annealing frames are
// animated but not kept, as on the server); the last one is animated.
// A frame's points are draws unless they are annealing or a reverse diffusion still under way.
const keptFrame = (f) => !f.annealing && f.kept !== false;
function takeFrames(pane, frames) {
  if (!frames || !frames.length) return null;
  for (let i = 0; i < frames.length - 1; i++) if (keptFrame(frames[i])) pushSamples(pane, frames[i].x);
  const last = frames[frames.length - 1];
  pane.prevX = frames.length > 1 ? frames[frames.length - 2].x : pane.x;
  pane.frame = last;
  pane.x = last.x;
  return last;
}

function onFrames(msg) {
  st.inFlight = false;
  if (msg.error) showError(msg.error);
  // The server stops a message at its time budget or reply size ("truncated"): ask for the rest, so a
  // click of k steps is k steps on a slow machine too (not after a configure/reset, which cancels them).
  else if (msg.truncated && st.sentGeneration === st.generation)
    st.pending += Math.max(0, st.sent - (msg.frames ? msg.frames.length : 0));
  const parts = [[panes[0], msg.frames, msg.diagnostics]];
  if (msg.compare && st.compare) parts.push([panes[1], msg.compare.frames, msg.compare.diagnostics]);
  const lasts = parts.map(([pane, frames]) => takeFrames(pane, frames));
  const finish = () => {
    parts.forEach(([pane, , diag], i) => {
      if (lasts[i] && keptFrame(lasts[i])) pushSamples(pane, lasts[i].x);
      showDiagnostics(pane, diag);
    });
    updateCaption();
    drawAll();
    pump();
    scheduleAutoplay();
  };
  const dur = clientInt("tweening-delay", 0, 60000, 0);
  if (lasts[0] && dur > 0 && document.visibilityState === "visible") {
    const tween = { start: performance.now(), dur };
    st.tween = tween;
    const tick = (now) => {
      if (st.tween !== tween) return; // cancelled by a reset/configure
      const p = Math.min(1, (now - tween.start) / tween.dur);
      for (const [pane] of parts) { drawMain(pane, p); drawStrip(pane); }
      if (p < 1) requestAnimationFrame(tick);
      else { st.tween = null; finish(); }
    };
    requestAnimationFrame(tick);
    updateIdle();
    return;
  }
  finish();
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
    st.compare = Boolean(msg.compare);
    panes[0].algorithm = msg.settings.algorithm;
    panes[1].algorithm = msg.compare ? msg.compare.algorithm : "";
    if (msg.reset) {
      st.tween = null;
      clearSamples();
      panes[0].x = msg.x;
      panes[1].x = msg.compare ? msg.compare.x : [];
    }
    st.bounds = msg.bounds;
    layoutPanes();
    showDiagnostics(panes[0], msg.diagnostics);
    if (msg.compare) showDiagnostics(panes[1], msg.compare.diagnostics);
    updateCaption();
    drawAll();
    updateIdle();
    scheduleAutoplay();
  } else if (msg.type === "frames") {
    onFrames(msg);
  } else if (msg.type === "export") {
    const blob = msg.format === "csv"
      ? new Blob([msg.data], { type: "text/csv" })
      : new Blob([Uint8Array.from(atob(msg.data), (c) => c.charCodeAt(0))],
                 { type: msg.format === "gif" ? "image/gif" : "application/octet-stream" });
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
  const algos = [$("algorithm").value, $("compare-algorithm").value].filter(Boolean);
  $("experts").hidden = $("target").value !== "product";
  const hmc = algos.includes("hmc") || (algos.includes("pt") && $("pt-base").value === "hmc");
  for (const el of document.querySelectorAll(".hmc-only")) el.hidden = !hmc;
  for (const a of ["annealed", "nuts", "pt", "diffusion"]) {
    for (const el of document.querySelectorAll(`.${a}-only`)) el.hidden = !algos.includes(a);
  }
  $("step-size").disabled = algos.every((a) => a === "rejection" || a === "annealed" || a === "diffusion");
  $("step-size-label").textContent = algos.length === 1 && algos[0] === "rwmh" ? "Proposal scale σ" : "Step size ε";
}

function targetInfo() {
  if (!st.info) return null;
  const name = $("target").value;
  if (name === st.info.product) {
    return { name, algorithms: st.info.product_algorithms, density: true, annealed: null, diffusion: null,
             kind: "product of experts" };
  }
  return st.info.targets.find((t) => t.name === name) || null;
}

// Mark the algorithms the chosen target cannot run (the server refuses them with a reason);
// on a change of target by hand, also move off an algorithm that became unavailable.
function syncAvailability(autoSwitch) {
  const info = targetInfo();
  if (!info) return;
  const allowed = new Set(info.algorithms);
  for (const sel of [$("algorithm"), $("compare-algorithm")]) {
    for (const o of sel.options) {
      if (!o.value) continue;
      o.disabled = !allowed.has(o.value);
      o.title = !o.disabled ? "" : o.value === "annealed"
        ? `needs a noise-conditional score; ${info.name} has none`
        : o.value === "diffusion"
          ? `needs a diffusion score s(x, t) (exact for Gaussian and mixture targets, or a trained diffusion run); ${info.name} has none`
          : `needs an energy; ${info.name} is a score model`;
    }
  }
  const sdes = new Set(info.diffusion ? info.diffusion.sdes : ["vp", "ve"]);
  for (const o of $("sde").options) {
    o.disabled = !sdes.has(o.value);
    o.title = o.disabled ? `${info.name} was trained with another SDE` : "";
  }
  if (!autoSwitch) return;
  const notes = [];
  if (!allowed.has($("algorithm").value)) {
    const to = allowed.has("mala") ? "mala" : info.algorithms[0];
    notes.push(`${algorithmName($("algorithm").value)} is not available for ${info.name}; switched to ${algorithmName(to)}.`);
    $("algorithm").value = to;
  }
  const cmp = $("compare-algorithm").value;
  if (cmp && !allowed.has(cmp)) {
    notes.push(`${algorithmName(cmp)} is not available for ${info.name}; side by side is off.`);
    $("compare-algorithm").value = "";
  }
  if (!sdes.has($("sde").value)) $("sde").value = [...sdes][0];
  if (notes.length) $("hint").textContent = notes.join(" ");
  if (info.annealed) { // the target's suggested annealing schedule (its noise scale)
    writeControl("num-levels", "int", info.annealed.num_levels);
    writeControl("sigma-max", "num", info.annealed.sigma_max);
    writeControl("sigma-min", "num", info.annealed.sigma_min);
    writeControl("eps", "num", info.annealed.eps);
  }
}

function fillTargets(info) {
  const opts = (sel, withProduct) => {
    sel.innerHTML = "";
    // Experts of a product need an energy: score models are offered as targets only.
    const list = withProduct ? info.targets : info.targets.filter((t) => t.density);
    const groups = [["Analytic targets", list.filter((t) => t.analytic)],
                    ["Trained models", list.filter((t) => !t.analytic)]];
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
  syncAvailability(false);
  syncVisibility();
  updateURL();
  await loadDensity();

  const serverIds = SERVER.map(([, id]) => id);
  for (const id of serverIds) {
    $(id).addEventListener("change", () => {
      if (id === "target" || id === "expert1" || id === "expert2") syncAvailability(true);
      if (id === "pt-base") layoutPanes();
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
  $("export-gif").addEventListener("click", () => send({ type: "export", format: "gif" }));
  window.addEventListener("resize", () => drawAll());
  connect();
}

// Read-only hook for tests and debugging in the console.
window.ebmlabPlayground = {
  samples: () => Array.from(panes[0].samples.subarray(0, 2 * panes[0].n)),
  samplesB: () => Array.from(panes[1].samples.subarray(0, 2 * panes[1].n)),
  bounds: () => st.bounds,
  chains: () => panes[0].x,
  chainsB: () => panes[1].x,
  frame: () => panes[0].frame, // the latest frame (with the tree / replicas the page draws)
  diagnostics: () => panes[0].diagnostics,
  // what the step button waits on (for a test that times out to say why)
  queue: () => ({ inFlight: st.inFlight, pending: st.pending, configuring: st.configuring, tween: Boolean(st.tween) }),
  // canvas pixel of a point (x1, x2) on the main canvas, and the strip's panel rectangles (canvas pixels)
  toPx: (x1, x2) => { const c = $("main"); return toPx(x1, x2, c.width, c.height); },
  stripRects: () => {
    const temps = paneTemperatures(panes[0]);
    const c = $("pt-strip");
    return temps ? stripLayout(temps.length, c.width, window.devicePixelRatio || 1).rects : [];
  },
  temperedReady: () => { const t = paneTemperatures(panes[0]); return Boolean(t) && t.every((v) => { const h = st.tempered.get(temperedKey(v)); return h && h !== "loading"; }); },
};

main().catch((err) => { showError(String(err)); setStatus("failed to start", false); });
