/* circuit-serve graph view: one attribution graph (frontend JSON) drawn on a canvas.
 *
 * Hand-written, no libraries. Reads the JSON from <script type="application/json" id="graph-data">
 * ({graph, key, source}); every string from the data (prompt, tokens, labels) reaches the page
 * through textContent or canvas fillText, never as HTML.
 *
 * Layout: x = token position (one column per prompt token), y = layer (embeddings at the bottom,
 * transcoder layers upwards, output logits on top); nodes sharing a (layer, position) cell sit
 * side by side in lines. Node area grows with influence; feature fill darkens with activation
 * (relative to the layer's strongest); error nodes are grey squares, embeddings green squares,
 * logits orange diamonds. Edges: blue positive, red negative, width and opacity by |weight|.
 *
 * Cost: layout O(nodes + edges) once. The canvases are the size of the visible part of the graph
 * (the stage scrolls over a sizer as large as the whole layout); each redraw walks the edges above
 * the slider's threshold once, skips those whose bounding box misses the view, and strokes one
 * canvas path per (sign, width level), so the rasterised area stays that of the window however
 * large the graph. Hover is an O(1) lookup in a spatial grid.
 *
 * State for automation (and tests), on #graph: data-state ("ready" once the first frame is
 * painted), data-drawn-nodes and data-drawn-edges (what the drawing holds: every node, every edge
 * with |weight| >= data-edge-threshold; parts outside the scrolled view are clipped),
 * data-total-edges, data-render-ms (script start to first painted frame), data-draw-ms (the last
 * redraw's script time), data-pinned (node id).
 * window.circuitGraph.locate(nodeId) scrolls the node into view and returns its viewport
 * coordinates {x, y}.
 */
(function () {
  "use strict";
  const started = performance.now();
  const payload = JSON.parse(document.getElementById("graph-data").textContent);
  const graph = payload.graph;
  const meta = graph.metadata || {};
  const info = meta.info || {};
  const tokens = meta.prompt_tokens || [];

  const POS_COLOR = "#1f6fd1";
  const NEG_COLOR = "#d1461f";
  const PATH_COLOR = "#f2a900";
  const WIDTH_LEVELS = 8;
  const HEADS_LISTED = 3; // heads shown per edge of a pinned node
  const LIST_LENGTH = 10;
  const SLIDER_MAX = 1000;
  const LOGIT_SLOT = 84; // px between logits along the top
  const LOGIT_LINE = 44; // px between lines of logits

  // ---- 1. nodes and edges -------------------------------------------------------------------
  function kindOf(n) {
    const t = String(n.feature_type || "");
    if (t === "embedding") return "embedding";
    if (t === "logit") return "logit";
    if (t.indexOf("error") >= 0) return "error";
    return "feature";
  }

  const nodes = graph.nodes.map(function (n, i) {
    return { i: i, id: String(n.node_id), raw: n, kind: kindOf(n), pos: Number(n.ctx_idx) || 0,
             x: 0, y: 0, r: 3, inE: [], outE: [] };
  });
  const byId = new Map(nodes.map(function (n) { return [n.id, n]; }));

  let nLayers = 0;
  for (const n of nodes) {
    if (n.kind === "logit") nLayers = Math.max(nLayers, parseInt(n.raw.layer, 10) - 1);
    else if (n.kind !== "embedding") nLayers = Math.max(nLayers, parseInt(n.raw.layer, 10) + 1);
  }
  const nRows = nLayers + 2; // embeddings, layers 0..L-1, logits
  function rowOf(n) {
    if (n.kind === "embedding") return 0;
    if (n.kind === "logit") return nRows - 1;
    return parseInt(n.raw.layer, 10) + 1;
  }
  let nPos = tokens.length;
  for (const n of nodes) nPos = Math.max(nPos, n.pos + 1);

  const edges = [];
  for (const l of graph.links) {
    const s = byId.get(String(l.source)), t = byId.get(String(l.target));
    const w = Number(l.weight);
    if (!s || !t || !isFinite(w)) continue;
    const e = { s: s, t: t, w: w, a: Math.abs(w), level: 0, heads: l.head_loadings || null };
    edges.push(e);
    s.outE.push(e);
    t.inE.push(e);
  }
  edges.sort(function (p, q) { return p.a - q.a; }); // weakest first: strong edges are drawn on top
  const absSorted = Float64Array.from(edges, function (e) { return e.a; });
  const maxAbs = edges.length ? absSorted[absSorted.length - 1] : 1;
  const minAbs = edges.length ? absSorted[0] : 0;
  for (const e of edges) {
    e.level = Math.min(WIDTH_LEVELS - 1, Math.floor(WIDTH_LEVELS * Math.pow(e.a / maxAbs, 0.6)));
  }
  for (const n of nodes) {
    n.inE.sort(function (p, q) { return q.a - p.a; });
    n.outE.sort(function (p, q) { return q.a - p.a; });
  }

  // size: influence (node_influence when the JSON has it, else 1 - cumulative share); logits: probability
  function influenceOf(n) {
    if (n.kind === "logit") return Number(n.raw.token_prob) || 0;
    if (typeof n.raw.node_influence === "number") return n.raw.node_influence;
    return typeof n.raw.influence === "number" ? Math.max(0, 1 - n.raw.influence) : 0;
  }
  let maxInfl = 0;
  const maxAct = new Map();
  for (const n of nodes) {
    if (n.kind !== "logit") maxInfl = Math.max(maxInfl, influenceOf(n));
    if (n.kind === "feature") {
      const a = Math.abs(Number(n.raw.activation) || 0);
      maxAct.set(n.raw.layer, Math.max(maxAct.get(n.raw.layer) || 0, a));
    }
  }

  // ---- 2. text for people -------------------------------------------------------------------
  function tokenAt(pos) { return pos >= 0 && pos < tokens.length ? String(tokens[pos]) : "?"; }
  function featureIndex(n) { const parts = n.id.split("_"); return parts.length === 3 ? parts[1] : "?"; }
  function describe(n) {
    const at = 'at "' + tokenAt(n.pos) + '" (pos ' + n.pos + ")";
    if (n.kind === "embedding") return 'embedding of "' + tokenAt(n.pos) + '" (pos ' + n.pos + ")";
    if (n.kind === "logit") return String(n.raw.clerp || "logit " + n.raw.feature);
    if (n.kind === "error") return "error node, layer " + n.raw.layer + " " + at;
    return "L" + n.raw.layer + " feature " + featureIndex(n) + " " + at + ": " + (n.raw.clerp || "unlabelled");
  }
  function fmt(x, digits) {
    if (x === null || x === undefined || !isFinite(Number(x))) return "\u2014";
    return Number(x).toPrecision(digits || 4);
  }
  function signed(w) { return (w >= 0 ? "+" : "") + w.toFixed(3); }
  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (attrs) for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  // ---- 3. header ----------------------------------------------------------------------------
  function buildHeader() {
    document.getElementById("prompt").textContent = String(meta.prompt || "");
    document.title = "attribution graph: " + String(meta.prompt || "");
    const dl = document.getElementById("info");
    function row(name, value, field) {
      dl.appendChild(el("dt", name));
      dl.appendChild(el("dd", value, { "data-field": field }));
    }
    let model = String(info.model_name || "");
    if (model.length > 40 && model.indexOf("/") >= 0) model = "\u2026/" + model.split("/").filter(Boolean).slice(-2).join("/");
    row("model", model + (info.model_id ? " (" + String(info.model_id).slice(0, 16) + "\u2026)" : ""), "model");
    dl.lastChild.title = String(info.model_name || "");
    row("transcoders", (meta.scan || "") + (info.transcoder_id ? " (" + String(info.transcoder_id).slice(0, 16) + "\u2026)" : ""),
        "transcoders");
    const settings = info.settings || {};
    const parts = Object.keys(settings).sort().map(function (k) { return k + "=" + JSON.stringify(settings[k]); });
    row("settings", parts.join(", "), "settings");
    row("replacement score", fmt(info.replacement_score, 3), "replacement-score");
    row("completeness score", fmt(info.completeness_score, 3), "completeness-score");
    row("graph key", payload.key ? String(payload.key) : "none (computed offline, not cached)", "key");
    const logits = nodes.filter(function (n) { return n.kind === "logit"; })
      .sort(function (p, q) { return (Number(q.raw.token_prob) || 0) - (Number(p.raw.token_prob) || 0); });
    row("outputs", logits.map(function (n) { return n.raw.clerp || n.id; }).join("; "), "outputs");
    row("size", nodes.length + " nodes, " + edges.length + " edges (pruned)", "size");
  }

  // ---- 4. layout ----------------------------------------------------------------------------
  const stage = document.getElementById("stage");
  const canvas = document.getElementById("graph");
  const overlay = document.getElementById("overlay");
  const tooltip = document.getElementById("tooltip");
  const slider = document.getElementById("edge-slider");
  const edgeCount = document.getElementById("edge-count");
  const sizer = document.getElementById("sizer");
  const L = { left: 64, right: 16, top: 20, bottom: 70, width: 0, height: 0, colW: 0, rowY: [], rowH: [], rMax: 8, grid: null,
              cell: 20, dpr: 1, viewW: 0, viewH: 0 };

  function layout() {
    const dense = nodes.length > 600;
    L.rMax = dense ? 5 : 9;
    const rMin = dense ? 2 : 3;
    const slot = 2 * L.rMax + 3;
    const cells = new Map();
    for (const n of nodes) {
      const k = rowOf(n) * nPos + n.pos;
      if (!cells.has(k)) cells.set(k, []);
      cells.get(k).push(n);
    }
    let busiest = 1;
    cells.forEach(function (list) { busiest = Math.max(busiest, list.length); });
    const avail = Math.max(400, stage.clientWidth - 4);
    const minCol = Math.max(44, Math.min(8 * slot, Math.ceil(Math.sqrt(busiest)) * slot + 6));
    L.colW = Math.max(minCol, (avail - L.left - L.right) / Math.max(1, nPos));
    L.width = Math.ceil(L.left + L.right + L.colW * nPos);
    const perLine = Math.max(1, Math.floor((L.colW - 6) / slot));
    const lines = new Array(nRows).fill(1);
    cells.forEach(function (list, k) {
      const r = Math.floor(k / nPos);
      lines[r] = Math.max(lines[r], Math.ceil(list.length / perLine));
    });
    // logits get their own line along the top, leftwards from the last position, each with its token and probability
    const logits = nodes.filter(function (n) { return n.kind === "logit"; })
      .sort(function (a, b) { return influenceOf(b) - influenceOf(a) || (a.id < b.id ? -1 : 1); });
    const logitsPerLine = Math.max(1, Math.floor((L.width - L.left - L.right) / LOGIT_SLOT));
    const logitLines = Math.max(1, Math.ceil(logits.length / logitsPerLine));
    lines[nRows - 1] = 0;
    const fill = (stage.clientHeight - L.top - L.bottom - 4) / nRows; // use the window's height when it is free
    L.rowH = lines.map(function (m) { return Math.max(56, Math.min(140, fill), m * slot + 18); });
    L.rowH[nRows - 1] = Math.max(64, logitLines * LOGIT_LINE + 24);
    let y = L.top;
    L.rowY = new Array(nRows);
    for (let r = nRows - 1; r >= 0; r--) { L.rowY[r] = y + L.rowH[r] / 2; y += L.rowH[r]; }
    L.height = Math.ceil(y + L.bottom);

    const order = { feature: 0, logit: 0, error: 1, embedding: 0 };
    cells.forEach(function (list, k) {
      if (list[0].kind === "logit") return; // below
      const r = Math.floor(k / nPos), p = k % nPos;
      list.sort(function (a, b) {
        return order[a.kind] - order[b.kind] || influenceOf(b) - influenceOf(a) || (a.id < b.id ? -1 : 1);
      });
      const nLines = Math.ceil(list.length / perLine);
      list.forEach(function (n, j) {
        const line = Math.floor(j / perLine), col = j % perLine;
        const inLine = Math.min(perLine, list.length - line * perLine);
        n.x = L.left + (p + 0.5) * L.colW + (col - (inLine - 1) / 2) * slot;
        n.y = L.rowY[r] + (line - (nLines - 1) / 2) * slot;
        const scale = n.kind === "logit" ? influenceOf(n) : maxInfl > 0 ? influenceOf(n) / maxInfl : 0;
        n.r = rMin + (L.rMax - rMin) * Math.sqrt(Math.max(0, Math.min(1, scale)));
      });
    });

    const anchor = L.left + (nPos - 0.5) * L.colW;
    logits.forEach(function (n, j) {
      const line = Math.floor(j / logitsPerLine), col = j % logitsPerLine;
      n.x = anchor - col * LOGIT_SLOT;
      n.y = L.rowY[nRows - 1] + 12 + (line - (logitLines - 1) / 2) * LOGIT_LINE;
      n.r = rMin + (L.rMax - rMin) * Math.sqrt(Math.max(0, Math.min(1, influenceOf(n))));
    });

    // spatial grid for hover
    L.cell = slot + 2;
    L.grid = new Map();
    for (const n of nodes) {
      const k = Math.floor(n.x / L.cell) + "," + Math.floor(n.y / L.cell);
      if (!L.grid.has(k)) L.grid.set(k, []);
      L.grid.get(k).push(n);
    }

    sizer.style.width = L.width + "px";
    sizer.style.height = L.height + "px";
    L.dpr = window.devicePixelRatio || 1;
    L.viewW = Math.min(L.width, stage.clientWidth);
    L.viewH = Math.min(L.height, stage.clientHeight);
    for (const c of [canvas, overlay]) {
      c.style.width = L.viewW + "px";
      c.style.height = L.viewH + "px";
      c.width = Math.round(L.viewW * L.dpr);
      c.height = Math.round(L.viewH * L.dpr);
    }
  }

  // the visible window of the layout: canvases sit at the stage's scroll offset and draw shifted by it
  function view(ctx) {
    const sx = stage.scrollLeft, sy = stage.scrollTop;
    ctx.canvas.style.left = sx + "px";
    ctx.canvas.style.top = sy + "px";
    ctx.setTransform(L.dpr, 0, 0, L.dpr, -sx * L.dpr, -sy * L.dpr);
    ctx.clearRect(sx, sy, L.viewW, L.viewH);
    return { x0: sx - 8, y0: sy - 8, x1: sx + L.viewW + 8, y1: sy + L.viewH + 8 };
  }
  function boxMisses(v, ax, ay, bx, by) {
    return Math.max(ax, bx) < v.x0 || Math.min(ax, bx) > v.x1 || Math.max(ay, by) < v.y0 || Math.min(ay, by) > v.y1;
  }

  // ---- 5. drawing ---------------------------------------------------------------------------
  let threshold = 0;
  let pinned = null;
  let hovered = null;

  function thresholdFromSlider(v) {
    if (v <= 0 || !edges.length) return 0;
    return minAbs * Math.pow(maxAbs / minAbs, v / SLIDER_MAX);
  }
  function firstVisible(t) { // index of the first edge with |w| >= t (binary search)
    let lo = 0, hi = absSorted.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (absSorted[mid] >= t) hi = mid; else lo = mid + 1; }
    return lo;
  }
  function curve(ctx, s, t) {
    const dy = (t.y - s.y) * 0.45;
    ctx.moveTo(s.x, s.y);
    ctx.bezierCurveTo(s.x, s.y + dy, t.x, t.y - dy, t.x, t.y);
  }
  function edgeWidth(level) { return 0.35 + 3.4 * (level + 1) / WIDTH_LEVELS; }

  function drawAxes(ctx, v) {
    ctx.save();
    ctx.strokeStyle = "#e5e7eb";
    ctx.fillStyle = "#6b7280";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let r = 0; r < nRows; r++) {
      ctx.beginPath();
      ctx.moveTo(Math.max(L.left, v.x0), L.rowY[r] + L.rowH[r] / 2);
      ctx.lineTo(Math.min(L.width - L.right, v.x1), L.rowY[r] + L.rowH[r] / 2);
      ctx.stroke();
    }
    ctx.textAlign = "right";
    const base = L.rowY[0] + L.rowH[0] / 2 + 8;
    const first = Math.max(0, Math.floor((v.x0 - L.left) / L.colW) - 1);
    const last = Math.min(nPos - 1, Math.ceil((v.x1 - L.left) / L.colW) + 8);
    for (let p = first; p <= last; p++) {
      const x = L.left + (p + 0.5) * L.colW;
      ctx.save();
      ctx.translate(x, base);
      ctx.rotate(-Math.PI / 4);
      const t = tokenAt(p);
      ctx.fillText(t.length > 14 ? t.slice(0, 13) + "\u2026" : t, 0, 0);
      ctx.restore();
    }
    ctx.restore();
  }
  function drawLogitText(ctx, v) { // token and probability above each logit
    ctx.save();
    ctx.fillStyle = "#374151";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    for (const n of nodes) {
      if (n.kind !== "logit" || boxMisses(v, n.x - LOGIT_SLOT / 2, n.y - 30, n.x + LOGIT_SLOT / 2, n.y)) continue;
      const m = /^Output "(.*)" \(p=/.exec(String(n.raw.clerp || ""));
      let token = m ? m[1] : String(n.raw.feature);
      if (token.length > 12) token = token.slice(0, 11) + "\u2026";
      ctx.fillText(token, n.x, n.y - n.r - 15);
      ctx.fillText("p=" + fmt(n.raw.token_prob, 3), n.x, n.y - n.r - 3);
    }
    ctx.restore();
  }
  function drawRowNames(ctx, v) { // kept at the left edge of the view while it scrolls sideways
    const x = v.x0 + 8;
    ctx.save();
    ctx.fillStyle = "rgba(255,255,255,0.85)";
    ctx.fillRect(x, v.y0, L.left - 4, v.y1 - v.y0);
    ctx.fillStyle = "#6b7280";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let r = 0; r < nRows; r++) ctx.fillText(r === 0 ? "emb" : r === nRows - 1 ? "logits" : "L" + (r - 1), x + L.left - 8, L.rowY[r]);
    ctx.restore();
  }

  function nodeShape(ctx, n) {
    const r = n.r;
    if (n.kind === "feature") ctx.arc(n.x, n.y, r, 0, 2 * Math.PI);
    else if (n.kind === "logit") {
      ctx.moveTo(n.x, n.y - r - 1); ctx.lineTo(n.x + r + 1, n.y); ctx.lineTo(n.x, n.y + r + 1); ctx.lineTo(n.x - r - 1, n.y);
      ctx.closePath();
    } else ctx.rect(n.x - r, n.y - r, 2 * r, 2 * r);
  }
  function featureFill(n) {
    const m = maxAct.get(n.raw.layer) || 1;
    const t = Math.max(0, Math.min(1, Math.abs(Number(n.raw.activation) || 0) / m));
    const c0 = [237, 226, 252], c1 = [88, 28, 135];
    const c = c0.map(function (v, k) { return Math.round(v + (c1[k] - v) * t); });
    return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
  }

  function draw() {
    const t0 = performance.now();
    const ctx = canvas.getContext("2d");
    const v = view(ctx);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(v.x0, v.y0, v.x1 - v.x0, v.y1 - v.y0);
    drawAxes(ctx, v);

    // edges: one path per (sign, width level), weakest first
    const from = firstVisible(threshold);
    const paths = [];
    for (let k = 0; k < 2 * WIDTH_LEVELS; k++) paths.push(new Path2D());
    let drawnEdges = 0;
    for (let j = from; j < edges.length; j++) {
      const e = edges[j];
      drawnEdges++;
      if (boxMisses(v, e.s.x, e.s.y, e.t.x, e.t.y)) continue; // clipped anyway: skip the work
      curve(paths[(e.w >= 0 ? 0 : WIDTH_LEVELS) + e.level], e.s, e.t);
    }
    const dim = pinned ? 0.35 : 1;
    for (let k = 0; k < 2 * WIDTH_LEVELS; k++) {
      const level = k % WIDTH_LEVELS;
      ctx.strokeStyle = k < WIDTH_LEVELS ? POS_COLOR : NEG_COLOR;
      ctx.globalAlpha = dim * (0.18 + 0.6 * (level + 1) / WIDTH_LEVELS);
      ctx.lineWidth = edgeWidth(level);
      ctx.stroke(paths[k]);
    }
    ctx.globalAlpha = 1;

    // nodes
    let drawnNodes = 0;
    const styles = { error: ["#c7ccd4", "#6b7280"], embedding: ["#6ee7b7", "#047857"], logit: ["#fbbf24", "#b45309"] };
    for (const n of nodes) {
      drawnNodes++;
      if (boxMisses(v, n.x - n.r, n.y - n.r, n.x + n.r, n.y + n.r)) continue;
      ctx.beginPath();
      nodeShape(ctx, n);
      if (n.kind === "feature") { ctx.fillStyle = featureFill(n); ctx.strokeStyle = "#3b0764"; }
      else { ctx.fillStyle = styles[n.kind][0]; ctx.strokeStyle = styles[n.kind][1]; }
      ctx.lineWidth = n.kind === "logit" && n.raw.is_target_logit ? 2.5 : 1;
      ctx.fill();
      ctx.stroke();
    }
    drawLogitText(ctx, v);
    drawRowNames(ctx, v);

    canvas.dataset.drawnNodes = String(drawnNodes);
    canvas.dataset.drawnEdges = String(drawnEdges);
    canvas.dataset.totalEdges = String(edges.length);
    canvas.dataset.edgeThreshold = String(threshold);
    canvas.dataset.drawMs = String(Math.round(performance.now() - t0));
    edgeCount.textContent = drawnEdges + " of " + edges.length + " edges shown" +
      (threshold > 0 ? " (|weight| \u2265 " + threshold.toPrecision(3) + ")" : " (all)");
    drawOverlay();
  }

  // strongest path: follow the strongest edge (|weight|) backwards to an embedding and forwards to a logit
  function strongestPath(n, dir) {
    const out = [];
    const seen = new Set([n.id]);
    let cur = n;
    for (let step = 0; step < nRows * nPos + 2; step++) {
      const list = dir < 0 ? cur.inE : cur.outE;
      if (!list.length) break;
      const e = list[0];
      const next = dir < 0 ? e.s : e.t;
      if (seen.has(next.id)) break;
      seen.add(next.id);
      out.push(e);
      cur = next;
    }
    return out;
  }

  function drawOverlay() {
    const ctx = overlay.getContext("2d");
    view(ctx);
    if (pinned) {
      const direct = pinned.inE.slice(0, LIST_LENGTH).concat(pinned.outE.slice(0, LIST_LENGTH));
      const path = strongestPath(pinned, -1).concat(strongestPath(pinned, 1));
      ctx.lineCap = "round";
      ctx.strokeStyle = PATH_COLOR;
      ctx.globalAlpha = 0.9;
      for (const e of path) {
        ctx.beginPath(); curve(ctx, e.s, e.t);
        ctx.lineWidth = edgeWidth(e.level) + 5; ctx.stroke();
      }
      for (const e of direct) {
        ctx.beginPath(); curve(ctx, e.s, e.t);
        ctx.strokeStyle = e.w >= 0 ? POS_COLOR : NEG_COLOR;
        ctx.lineWidth = edgeWidth(e.level) + 1.5; ctx.stroke();
      }
      ctx.globalAlpha = 1;
      ring(ctx, pinned, "#111827", 3);
      for (const e of path) { ring(ctx, e.s, PATH_COLOR, 2); ring(ctx, e.t, PATH_COLOR, 2); }
    }
    if (hovered) ring(ctx, hovered, "#111827", 1.5);
  }
  function ring(ctx, n, color, width) {
    ctx.beginPath();
    ctx.arc(n.x, n.y, n.r + 3, 0, 2 * Math.PI);
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.stroke();
  }

  // ---- 6. interaction -----------------------------------------------------------------------
  function nodeAt(x, y) {
    const cx = Math.floor(x / L.cell), cy = Math.floor(y / L.cell);
    let best = null, bestD = Infinity;
    for (let i = -1; i <= 1; i++) {
      for (let j = -1; j <= 1; j++) {
        const list = L.grid.get((cx + i) + "," + (cy + j));
        if (!list) continue;
        for (const n of list) {
          const d = Math.hypot(n.x - x, n.y - y);
          if (d <= n.r + 3 && d < bestD) { best = n; bestD = d; }
        }
      }
    }
    return best;
  }
  function local(ev) { // layout coordinates of a mouse event
    const b = stage.getBoundingClientRect();
    return [ev.clientX - b.left - stage.clientLeft + stage.scrollLeft, ev.clientY - b.top - stage.clientTop + stage.scrollTop];
  }

  function fields(n) {
    const rows = [["label", describe(n)], ["kind", n.kind],
                  ["layer", n.kind === "embedding" ? "embedding" : n.kind === "logit" ? "output" : n.raw.layer],
                  ["position", n.pos + ' ("' + tokenAt(n.pos) + '")']];
    if (n.kind === "feature") rows.push(["activation", fmt(n.raw.activation, 6)]);
    if (n.kind === "logit") rows.push(["probability", fmt(n.raw.token_prob, 4)]);
    else {
      if (typeof n.raw.node_influence === "number") rows.push(["influence", fmt(n.raw.node_influence, 4)]);
      rows.push(["cumulative influence", fmt(n.raw.influence, 4)]);
    }
    return rows;
  }
  function fillFields(parent, n) {
    for (const [name, value] of fields(n)) {
      const line = el("div", null, { "class": "field" });
      line.appendChild(el("span", name, { "class": "name" }));
      line.appendChild(el("span", value, { "data-field": name.replace(/ /g, "-") }));
      parent.appendChild(line);
    }
  }

  function showTooltip(n, ev) {
    tooltip.replaceChildren();
    tooltip.dataset.nodeId = n.id;
    fillFields(tooltip, n);
    tooltip.hidden = false;
    const b = stage.getBoundingClientRect();
    let x = ev.clientX - b.left + stage.scrollLeft + 14, y = ev.clientY - b.top + stage.scrollTop + 14;
    const w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    if (x + w > stage.scrollLeft + stage.clientWidth) x = Math.max(stage.scrollLeft, x - w - 28);
    if (y + h > stage.scrollTop + stage.clientHeight) y = Math.max(stage.scrollTop, y - h - 28);
    tooltip.style.left = x + "px";
    tooltip.style.top = y + "px";
  }

  function edgeList(title, id, list, other) {
    const section = el("section");
    section.appendChild(el("h3", title));
    const ol = el("ol", null, { id: id, "data-count": Math.min(LIST_LENGTH, list.length) });
    for (const e of list.slice(0, LIST_LENGTH)) {
      const n = other(e);
      const li = el("li", null, { "data-node-id": n.id, "data-weight": e.w, "class": e.w >= 0 ? "pos" : "neg" });
      li.appendChild(el("span", signed(e.w), { "class": "w" }));
      li.appendChild(el("span", describe(n)));
      if (e.heads) li.appendChild(headLoadings(e.heads));
      li.addEventListener("click", function () { pin(n); });
      ol.appendChild(li);
    }
    if (!list.length) section.appendChild(el("p", "none", { "class": "muted" }));
    section.appendChild(ol);
    return section;
  }
  // An edge's split by attention head (links' head_loadings): the direct part, then the
  // strongest heads as L<layer>H<head>.
  function headLoadings(h) {
    const parts = ["direct " + signed(h.direct)];
    for (const x of h.heads.slice(0, HEADS_LISTED)) parts.push("L" + x[0] + "H" + x[1] + " " + signed(x[2]));
    if (h.heads.length > HEADS_LISTED || Math.abs(h.rest) > 0) parts.push("...");
    return el("span", parts.join(" \u00b7 "), { "class": "heads muted", "data-heads": h.heads.length });
  }
  function pathList(title, id, path, dir) {
    const section = el("section");
    section.appendChild(el("h3", title));
    const ol = el("ol", null, { id: id, "class": "path" });
    for (const e of path) {
      const n = dir < 0 ? e.s : e.t;
      const li = el("li", null, { "data-node-id": n.id, "data-weight": e.w });
      li.appendChild(el("span", signed(e.w), { "class": "w" }));
      li.appendChild(el("span", describe(n)));
      li.addEventListener("click", function () { pin(n); });
      ol.appendChild(li);
    }
    if (!path.length) section.appendChild(el("p", "none", { "class": "muted" }));
    section.appendChild(ol);
    return section;
  }

  const details = document.getElementById("details");
  function pin(n) {
    pinned = n;
    canvas.dataset.pinned = n ? n.id : "";
    details.replaceChildren();
    if (!n) {
      details.appendChild(el("p", "Click a node to pin it: its strongest inputs, outputs and paths are listed here.",
                             { "class": "muted" }));
    } else {
      details.appendChild(el("h2", describe(n), { id: "pinned-label" }));
      const box = el("div", null, { "class": "fields" });
      fillFields(box, n);
      details.appendChild(box);
      details.appendChild(edgeList("Strongest inputs (weight <- source)", "inputs", n.inE, function (e) { return e.s; }));
      details.appendChild(edgeList("Strongest outputs (weight -> target)", "outputs", n.outE, function (e) { return e.t; }));
      details.appendChild(pathList("Strongest path in (back to a token)", "path-in", strongestPath(n, -1), -1));
      details.appendChild(pathList("Strongest path out (on to a logit)", "path-out", strongestPath(n, 1), 1));
    }
    draw();
  }

  canvas.addEventListener("mousemove", function (ev) {
    const [x, y] = local(ev);
    const n = nodeAt(x, y);
    if (n !== hovered) { hovered = n; drawOverlay(); }
    canvas.style.cursor = n ? "pointer" : "default";
    if (n) showTooltip(n, ev); else { tooltip.hidden = true; delete tooltip.dataset.nodeId; }
  });
  canvas.addEventListener("mouseleave", function () {
    hovered = null; tooltip.hidden = true; drawOverlay();
  });
  canvas.addEventListener("click", function (ev) {
    const [x, y] = local(ev);
    pin(nodeAt(x, y));
  });

  let queued = false;
  function schedule(fn) {
    if (queued) return;
    queued = true;
    requestAnimationFrame(function () { queued = false; fn(); });
  }
  slider.max = String(SLIDER_MAX);
  slider.addEventListener("input", function () {
    threshold = thresholdFromSlider(Number(slider.value));
    schedule(draw);
  });
  window.addEventListener("resize", function () { schedule(function () { layout(); draw(); }); });
  stage.addEventListener("scroll", function () { schedule(draw); });

  window.circuitGraph = {
    locate: function (id) {
      const n = byId.get(String(id));
      if (!n) return null;
      stage.scrollLeft = Math.max(0, n.x - stage.clientWidth / 2);
      stage.scrollTop = Math.max(0, n.y - stage.clientHeight / 2);
      draw();
      const b = stage.getBoundingClientRect();
      return { x: b.left + stage.clientLeft + n.x - stage.scrollLeft, y: b.top + stage.clientTop + n.y - stage.scrollTop };
    },
  };

  buildHeader();
  layout();
  pin(null);
  requestAnimationFrame(function () { // runs before the first frame is painted; the next one after it
    requestAnimationFrame(function () {
      canvas.dataset.renderMs = String(Math.round(performance.now() - started));
      canvas.dataset.state = "ready";
    });
  });
})();
