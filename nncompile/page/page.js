// nncompile's interactive page: pan and zoom, search by name, layers that collapse, and the
// side panel of the clicked node or wire. Our own code, with no dependencies (see
// docs/rendering.md): it reads the JSON in #nn-data and the SVG Graphviz drew, writes every
// piece of user text with textContent (never as markup), and fetches nothing.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("nn-data").textContent);
  const svg = document.getElementById("nn-svg");
  const SVGNS = svg.namespaceURI;   // the parser's, so that the page holds no URL at all
  const viewport = document.getElementById("nn-viewport");
  const graph = viewport.querySelector("g.graph");
  const details = document.getElementById("nn-details");
  const layersPanel = document.getElementById("nn-layers");
  const search = document.getElementById("nn-search");
  const searchCount = document.getElementById("nn-search-count");
  const view = { x: 0, y: 0, k: 1 };

  // ---- small helpers ----

  function el(tag, attrs, ...children) {   // an HTML element; text children stay text
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function svgEl(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function num(v) {
    if (typeof v === "string") return v;             // "nan", "inf", "-inf"
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
    return String(Number(v.toPrecision(4)));
  }

  function titleOf(g) {
    const t = g.querySelector(":scope > title");
    return t ? t.textContent : "";
  }

  function inside(a, b) {
    const e = 0.5;
    return a.x >= b.x - e && a.y >= b.y - e && a.x + a.width <= b.x + b.width + e &&
      a.y + a.height <= b.y + b.height + e;
  }

  // ---- what is drawn: elements by DOT id, and the graph node each stands for ----

  const items = [...graph.querySelectorAll(":scope > g.node, :scope > g.edge")];
  const byDot = new Map();
  const bbox = new Map();
  for (const g of items) {
    const title = titleOf(g);
    g.setAttribute("data-dot", title);
    const b = g.getBBox();
    bbox.set(g, b);
    if (g.classList.contains("node")) {   // the whole of a node's box takes a click, not only its ink
      byDot.set(title, g);
      g.prepend(svgEl("rect", { x: b.x, y: b.y, width: b.width, height: b.height, class: "nn-hit" }));
    } else {   // a fatter, invisible copy of the wire, so that a thin edge is easy to click
      const path = g.querySelector("path");
      if (path) {
        const hit = path.cloneNode(false);
        hit.setAttribute("class", "nn-hit");
        g.append(hit);
      }
    }
  }

  function nodeOf(g) {
    if (g.classList.contains("edge")) {   // a wire belongs to the value it carries: its source's
      const src = titleOf(g).split("->")[0].split(":")[0];
      return data.elements[src];
    }
    return data.elements[titleOf(g)];
  }

  function layerBoxOf(id) {
    for (const [dot, layer] of Object.entries(data.layers)) if (layer.members.includes(id)) return byDot.get(dot);
    return null;
  }

  function elementOf(id) {
    return byDot.get("n" + id) || byDot.get("v" + id) || layerBoxOf(id) ||
      items.find((g) => g.classList.contains("node") && nodeOf(g) === id) || null;
  }

  // ---- pan and zoom ----

  function apply() {
    viewport.setAttribute("transform", `translate(${view.x} ${view.y}) scale(${view.k})`);
  }

  function zoomAt(factor, cx, cy) {
    const k = Math.min(40, Math.max(0.02, view.k * factor));
    const f = k / view.k;
    view.x = cx - (cx - view.x) * f;
    view.y = cy - (cy - view.y) * f;
    view.k = k;
    apply();
  }

  function zoomCentre(factor) {
    zoomAt(factor, svg.clientWidth / 2, svg.clientHeight / 2);
  }

  function fit() {
    viewport.setAttribute("transform", "");
    const b = viewport.getBBox();
    const w = svg.clientWidth, ht = svg.clientHeight;
    const k = Math.min((w - 24) / b.width, (ht - 24) / b.height, 2);
    view.k = k > 0 ? k : 1;
    view.x = (w - b.width * view.k) / 2 - b.x * view.k;
    view.y = (ht - b.height * view.k) / 2 - b.y * view.k;
    apply();
  }

  function centre(g) {
    if (view.k < 1) zoomCentre(1 / view.k);
    const r = g.getBoundingClientRect(), c = svg.getBoundingClientRect();
    view.x += c.left + c.width / 2 - (r.left + r.width / 2);
    view.y += c.top + c.height / 2 - (r.top + r.height / 2);
    apply();
  }

  let drag = null;
  svg.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y, moved: false };
  });
  svg.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 4) return;
    if (!drag.moved) svg.setPointerCapture(e.pointerId);
    drag.moved = true;
    svg.classList.add("nn-dragging");
    view.x = drag.vx + dx;
    view.y = drag.vy + dy;
    apply();
  });
  function endDrag() {
    svg.classList.remove("nn-dragging");
    setTimeout(() => { drag = null; }, 0);   // the click that ends a drag selects nothing
  }
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  document.getElementById("nn-zoom-in").addEventListener("click", () => zoomCentre(1.25));
  document.getElementById("nn-zoom-out").addEventListener("click", () => zoomCentre(0.8));
  document.getElementById("nn-fit").addEventListener("click", fit);
  const PAN = { ArrowLeft: [60, 0], ArrowRight: [-60, 0], ArrowUp: [0, 60], ArrowDown: [0, -60] };
  document.addEventListener("keydown", (e) => {
    if (e.target === search || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "+" || e.key === "=") zoomCentre(1.25);
    else if (e.key === "-" || e.key === "_") zoomCentre(0.8);
    else if (e.key === "0") fit();
    else if (e.key in PAN) { view.x += PAN[e.key][0]; view.y += PAN[e.key][1]; apply(); }
    else if (e.key === "/") search.focus();
    else if (e.key === "Escape") select(null);
    else return;
    e.preventDefault();
  });

  // ---- layers that collapse: a collapsed cluster is one box over its extent ----

  const clusters = [...graph.querySelectorAll(":scope > g.cluster")].map((g) => {
    const title = titleOf(g);
    g.setAttribute("data-dot", title);
    const label = [...g.querySelectorAll("text")].map((t) => t.textContent).join(" ").replace(/\s+/g, " ").trim();
    return { g, title, label, box: g.getBBox(), collapsed: false };
  });
  for (const c of clusters) {
    c.members = items.filter((g) => inside(bbox.get(g), c.box));
    c.inner = clusters.filter((d) => d !== c && inside(d.box, c.box));
    c.overlay = svgEl("g", { class: "nn-collapsed nn-hidden", "data-cluster": c.title });
    c.overlay.append(svgEl("rect", { x: c.box.x, y: c.box.y, width: c.box.width, height: c.box.height, rx: 6 }));
    const mid = { x: c.box.x + c.box.width / 2, y: c.box.y + c.box.height / 2, "text-anchor": "middle" };
    const name = svgEl("text", { ...mid, y: mid.y - 2, class: "nn-collapsed-name" });
    name.textContent = "▸ " + c.label;
    const more = svgEl("text", { ...mid, y: mid.y + 14, class: "nn-collapsed-more" });
    more.textContent = `collapsed: ${c.members.filter((g) => g.classList.contains("node")).length} nodes; click to expand`;
    c.overlay.append(name, more);
    graph.append(c.overlay);
  }

  function covered(c) {
    return clusters.some((d) => d.collapsed && d.inner.includes(c));
  }

  function relayout() {
    const hidden = new Set();
    for (const c of clusters) if (c.collapsed) c.members.forEach((g) => hidden.add(g));
    for (const g of items) g.classList.toggle("nn-hidden", hidden.has(g));
    for (const c of clusters) {
      const under = covered(c);
      c.g.classList.toggle("nn-hidden", c.collapsed || under);
      c.overlay.classList.toggle("nn-hidden", !c.collapsed || under);
      if (c.button) {
        c.button.setAttribute("aria-expanded", String(!c.collapsed));
        c.button.textContent = (c.collapsed ? "▸ " : "▾ ") + c.label;
      }
    }
  }

  function setCollapsed(c, collapsed) {
    c.collapsed = collapsed;
    relayout();
  }

  function reveal(g) {   // expand every collapsed layer that hides g
    let changed = false;
    for (const c of clusters) if (c.collapsed && c.members.includes(g)) { c.collapsed = false; changed = true; }
    if (changed) relayout();
  }

  function layerList() {
    const parts = [];
    if (clusters.length) {
      const all = (collapsed) => () => { clusters.forEach((c) => { c.collapsed = collapsed; }); relayout(); };
      const collapse = el("button", { type: "button", id: "nn-collapse-all" }, "collapse all");
      const expand = el("button", { type: "button", id: "nn-expand-all" }, "expand all");
      collapse.addEventListener("click", all(true));
      expand.addEventListener("click", all(false));
      const list = el("ul", { class: "nn-layer-list" });
      for (const c of clusters) {
        const depth = clusters.filter((d) => d.inner.includes(c)).length;
        c.button = el("button", { type: "button", class: "nn-layer-toggle", "data-cluster": c.title,
          "aria-expanded": "true" }, "▾ " + c.label);
        c.button.addEventListener("click", () => setCollapsed(c, !c.collapsed));
        const li = el("li", {}, c.button);
        li.classList.add("nn-depth-" + Math.min(depth, 4));
        list.append(li);
      }
      parts.push(el("h3", {}, "Layers"), el("div", { class: "nn-row" }, collapse, expand), list);
    }
    if (data.health) {
      parts.push(el("h3", {}, "Gradient health"), el("ul", { class: "nn-health-legend" },
        ...["ok", "warn", "bad"].map((level) => el("li", { class: "nn-health-" + level }, level))));
    }
    layersPanel.replaceChildren(...parts);
  }

  // ---- search by name ----

  let matches = [], current = -1;

  function runSearch() {
    document.querySelectorAll(".nn-match").forEach((g) => g.classList.remove("nn-match"));
    const q = search.value.trim().toLowerCase();
    matches = [];
    current = -1;
    if (!q) { searchCount.textContent = ""; return; }
    for (const node of Object.values(data.nodes)) {
      if (node.name && node.name.toLowerCase().includes(q)) {
        const g = elementOf(node.id);
        if (g) { g.classList.add("nn-match"); matches.push(node.id); }
      }
    }
    searchCount.textContent = matches.length ? `${matches.length} found` : "none found";
    next();
  }

  function next() {
    if (!matches.length) return;
    current = (current + 1) % matches.length;
    const g = elementOf(matches[current]);
    reveal(g);
    centre(g);
    select(matches[current]);
    searchCount.textContent = `${current + 1} of ${matches.length}`;
  }

  search.addEventListener("input", runSearch);
  search.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); next(); }
    else if (e.key === "Escape") { search.value = ""; runSearch(); }
  });

  // ---- the side panel ----

  function statsTable(st) {
    const rows = [["min", st.min], ["mean", st.mean], ["max", st.max], ["std", st.std], ["‖·‖₂", st.norm]]
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, num(v))));
    rows.push(el("tr", {}, el("th", {}, "zeros"), el("td", {}, `${st.zeros} of ${st.size}`)));
    const bad = st.nan + st.posinf + st.neginf;
    rows.push(el("tr", { class: bad ? "nn-nonfinite" : "" }, el("th", {}, "non-finite"),
      el("td", {}, `${st.nan} NaN, ${st.posinf} +inf, ${st.neginf} −inf`)));
    return el("table", { class: "nn-stats" }, ...rows);
  }

  function histogram(hist, colour) {
    const W = 260, H = 64, n = hist.counts.length, top = Math.max(...hist.counts, 1);
    const chart = svgEl("svg", { class: "nn-histogram " + colour, width: W, height: H + 16, viewBox: `0 0 ${W} ${H + 16}`,
      role: "img", "aria-label": "histogram" });
    const bw = W / n;
    hist.counts.forEach((count, i) => {
      const bh = count ? Math.max(1, (count / top) * H) : 0;
      const bar = svgEl("rect", { x: i * bw + 0.5, y: H - bh, width: Math.max(bw - 1, 1), height: bh });
      const tip = svgEl("title");
      const lo = hist.lo + (hist.hi - hist.lo) * i / n, hi = hist.lo + (hist.hi - hist.lo) * (i + 1) / n;
      tip.textContent = `${count} in [${num(lo)}, ${num(hi)})`;
      bar.append(tip);
      chart.append(bar);
    });
    chart.append(svgEl("line", { x1: 0, y1: H + 0.5, x2: W, y2: H + 0.5, class: "nn-axis" }));
    const left = svgEl("text", { x: 0, y: H + 13, class: "nn-tick" });
    left.textContent = num(hist.lo);
    const right = svgEl("text", { x: W, y: H + 13, class: "nn-tick", "text-anchor": "end" });
    right.textContent = num(hist.hi);
    chart.append(left, right);
    return chart;
  }

  function featureMaps(maps) {   // a 4-D value's first example, a small greyscale canvas per channel
    const box = el("div", { class: "nn-maps", "data-field": "maps" }, el("p", { class: "nn-meta" },
      `example 0: ${maps.pixels.length} of ${maps.of} channels, ${maps.height}×${maps.width}, each from its min (black) to its max (white)`));
    maps.pixels.forEach((pixels, c) => {
      const canvas = el("canvas", { class: "nn-map", width: maps.width, height: maps.height,
        title: `channel ${c}: ${num(maps.lo[c])} … ${num(maps.hi[c])}` });
      const ctx = canvas.getContext("2d");
      const image = ctx.createImageData(maps.width, maps.height);
      pixels.forEach((v, i) => { image.data.set([v, v, v, 255], 4 * i); });
      ctx.putImageData(image, 0, 0);
      box.append(canvas);
    });
    return box;
  }

  function arraySection(heading, colour, st, field) {
    const sec = el("section", { class: "nn-array " + colour, "data-field": field }, el("h3", {}, heading));
    if (typeof st === "string" || st === null) {
      sec.append(el("p", { class: "nn-none" }, st === null ? "value not recorded" : st));
      return sec;
    }
    if (st.size === 1 && st.text !== undefined) {
      sec.append(el("p", { class: "nn-scalar" }, st.text));
      if (st.nan + st.posinf + st.neginf) sec.append(statsTable(st));
      return sec;
    }
    sec.append(el("p", { class: "nn-meta" }, `${st.dtype} [${st.shape.join(", ")}], ${st.size} values`));
    sec.append(statsTable(st));
    if (st.histogram) sec.append(histogram(st.histogram, colour));
    if (st.maps) sec.append(featureMaps(st.maps));
    if (st.text !== undefined) sec.append(el("pre", { class: "nn-numbers" }, st.text));
    return sec;
  }

  function field(dl, key, name, ...value) {
    dl.append(el("dt", {}, name), el("dd", { "data-field": key }, ...value));
  }

  function nodePanel(node, viaWire) {
    const kinds = { input: "input", param: "param", const: "constant", op: "op" };
    let kind = kinds[node.kind] || node.kind;
    if (Object.values(data.outputs).includes(node.id)) kind += ", output";
    const title = node.name || node.label || node.op;
    const parts = [el("h2", {}, el("span", { class: "nn-kind" }, viaWire ? "wire of" : kind), " ",
      el("span", { "data-field": "name" }, title))];
    const dl = el("dl");
    field(dl, "op", "op", node.kind === "op" ? `${node.op} (${node.label})` : kind);
    if (node.layer) field(dl, "layer", "layer", node.layer + (node.layer_type ? ": " + node.layer_type : ""));
    field(dl, "shape", "shape", node.shape);
    field(dl, "dtype", "dtype", node.dtype);
    if (node.source) {
      const where = `${node.source.file}:${node.source.line}:${node.source.col}`;
      field(dl, "source", "source", el("span", { class: "nn-where" }, where),
        node.source.text !== null ? el("code", {}, node.source.text.trim()) : null);
    }
    parts.push(dl);
    if (node.health) {
      const hl = node.health;
      parts.push(el("section", { class: "nn-health nn-health-" + hl.level, "data-field": "health" },
        el("h3", {}, "gradient health: " + hl.level),
        el("p", {}, `${hl.metric}${hl.value !== null ? " = " + num(hl.value) : ""}`),
        hl.message ? el("p", {}, hl.message) : null));
    }
    parts.push(arraySection("value", "nn-green", node.value, "value"));
    const gradHeading = data.target ? `gradient ∂${data.target}/∂value` : "gradient";
    parts.push(arraySection(gradHeading, "nn-red", node.grad, "grad"));
    return parts;
  }

  function layerPanel(layer) {
    const params = layer.members.map((id) => data.nodes[String(id)]).filter((n) => n.kind === "param");
    const list = el("ul");
    for (const p of params) list.append(el("li", {}, `${p.name} ${p.shape}`));
    return [el("h2", {}, el("span", { class: "nn-kind" }, "layer"), " ", el("span", { "data-field": "name" }, layer.name)),
      el("p", {}, `${layer.type}: ${layer.members.length} nodes, ${params.length} params`), list];
  }

  let selected = [];
  function select(id, g, viaWire) {
    selected.forEach((e) => e.classList.remove("nn-selected"));
    selected = [];
    if (id === null || id === undefined) {
      details.replaceChildren(el("p", { class: "nn-hint" }, "Click a node or a wire to see its value and gradient."));
      return;
    }
    const node = data.nodes[String(id)];
    if (!node) return;
    for (const e of [g || elementOf(id), byDot.get("v" + id)]) if (e) { e.classList.add("nn-selected"); selected.push(e); }
    details.replaceChildren(...nodePanel(node, viaWire));
    details.setAttribute("data-node", String(id));
  }

  svg.addEventListener("click", (e) => {
    if (drag && drag.moved) return;
    const g = e.target.closest("g.node, g.edge, g.cluster, g.nn-collapsed");
    if (!g) return;
    if (g.classList.contains("cluster") || g.classList.contains("nn-collapsed")) {
      const c = clusters.find((c) => c.title === (g.getAttribute("data-cluster") || g.getAttribute("data-dot")));
      if (c) setCollapsed(c, !c.collapsed);
      return;
    }
    const box = data.layers[g.getAttribute("data-dot")];
    if (box) {
      selected.forEach((e) => e.classList.remove("nn-selected"));
      selected = [g];
      g.classList.add("nn-selected");
      details.replaceChildren(...layerPanel(box));
      details.removeAttribute("data-node");
      return;
    }
    const dot = g.getAttribute("data-dot");
    select(nodeOf(g), g, g.classList.contains("edge") || /^v\d+$/.test(dot));
  });

  // ---- start ----

  for (const node of Object.values(data.nodes)) {
    if (!node.health) continue;
    const cls = "nn-health-" + node.health.level;
    for (const g of items) if (nodeOf(g) === node.id && !g.getAttribute("data-dot").startsWith("out")) g.classList.add(cls);
  }
  document.getElementById("nn-note").textContent = data.note || `${data.mode} mode`;
  layerList();
  fit();
  document.documentElement.setAttribute("data-ready", "true");
})();
