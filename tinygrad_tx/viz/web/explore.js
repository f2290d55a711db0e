// The tinygrad_tx graph explorer: folds and unfolds modules, writes the visible graph as DOT, and lays
// it out with Graphviz compiled to WebAssembly (viz.js, loaded before this script as the global `Viz`).
//
// The page's data (the <script id="tx-data"> element, written by tinygrad_tx/viz/explore.py) holds each
// view (forward, backward) unfolded: vertices with their labels, Graphviz attributes and details, edges
// [src, dst, label, shape], and every module with its cluster attributes and its folded-box label.
// Folding follows draw_graph's rule: a vertex is hidden in the box of the outermost closed module of its
// scope; edges inside one box vanish, and an edge leaving a box is labelled with the shape it carries.
"use strict";

(function () {
  const DATA = JSON.parse(document.getElementById("tx-data").textContent);
  const AUTO_NODES = 150;        // the opening depth is the deepest that shows at most this many nodes
  const state = {
    view: "forward",
    expanded: new Set(),         // module paths drawn open (as clusters); every other module is a box
    selected: null,              // {kind: "vertex"|"module", id} kept by a click
    hit: null,                   // the element id of the last search result, highlighted
    zoom: 1,
    pan: { x: 0, y: 0 },
    renders: 0,
  };
  const $ = (id) => document.getElementById(id);
  const graphBox = $("graph");
  let viz = null;
  let svgSize = null;            // the drawing's natural size in px, before zoom

  // ------------------------------------------------------------------ the module tree
  function currentView() { return DATA.views[state.view]; }

  function allModules() {
    const paths = new Map();
    for (const view of Object.values(DATA.views)) {
      for (const [path, m] of Object.entries(view.modules)) paths.set(path, m);
    }
    return paths;
  }

  function chain(view, scope) {  // scope and the modules around it, outermost first
    const out = [];
    for (let s = scope; s; s = view.modules[s] ? view.modules[s].parent : "") out.push(s);
    return out.reverse();
  }

  function setDepth(depth) {     // open every module at level <= depth (Infinity: all)
    state.expanded = new Set();
    for (const [path, m] of allModules()) if (m.level <= depth) state.expanded.add(path);
  }

  // ------------------------------------------------------------------ folding
  function visibleGraph(view) {
    const shownAs = new Map();   // vertex id -> the id drawn for it (itself, or its module's box)
    const nodes = [];
    const boxes = new Map();     // module path -> {path, root}
    for (const v of view.vertices) {
      const folded = chain(view, v.scope).find((s) => !state.expanded.has(s));
      if (folded === undefined) {
        shownAs.set(v.id, v.id);
        nodes.push(v);
      } else {
        shownAs.set(v.id, "box:" + folded);
        if (!boxes.has(folded)) boxes.set(folded, { path: folded, root: false });
        if (v.root) boxes.get(folded).root = true;
      }
    }
    const edges = [];
    const seen = new Set();
    for (const [src, dst, label, shape] of view.edges) {
      const from = shownAs.get(src), to = shownAs.get(dst);
      if (from === to && from !== src) continue;          // inside one box
      const srcBoxed = from !== src, dstBoxed = to !== dst;
      const text = label || (srcBoxed ? shape : "");      // the tensor that carried it is hidden in the box
      if (srcBoxed || dstBoxed) {
        const key = [from, to, srcBoxed ? src : "", text].join("\u0000");
        if (seen.has(key)) continue;
        seen.add(key);
      }
      edges.push([from, to, text]);
    }
    return { nodes, boxes: [...boxes.values()], edges };
  }

  function countVisible(view) {
    const g = visibleGraph(view);
    return g.nodes.length + g.boxes.length;
  }

  // ------------------------------------------------------------------ DOT
  function quote(s) {
    return '"' + String(s).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"';
  }

  function attrList(attrs) {     // {html: "<...>"} is a Graphviz HTML label (graph.dot_label), left unquoted
    const value = (v) => (typeof v === "object" ? v.html : quote(v));
    return Object.entries(attrs).map(([k, v]) => k + "=" + value(v)).join(", ");
  }

  function labelOf(item) { return item.html_label ? { html: item.html_label } : item.label; }

  function toDot(view, g) {
    const members = new Map();   // cluster path ("" for the top) -> lines of its nodes
    const children = new Map();  // cluster path -> child cluster paths
    const place = (scope, line) => {
      const path = chain(view, scope);
      let parent = "";
      for (const s of path) {
        if (!children.has(parent)) children.set(parent, new Set());
        children.get(parent).add(s);
        parent = s;
      }
      if (!members.has(parent)) members.set(parent, []);
      members.get(parent).push(line);
    };
    for (const v of g.nodes) {
      place(v.scope, quote(v.id) + " [" + attrList({ ...v.attrs, label: labelOf(v), id: "n:" + v.id }) + "]");
    }
    for (const b of g.boxes) {
      const m = view.modules[b.path];
      const attrs = { ...m.attrs, label: labelOf(m), id: "n:box:" + b.path };
      if (b.root) Object.assign(attrs, { penwidth: "2.5", color: "#c0392b" });
      place(m.parent, quote("box:" + b.path) + " [" + attrList(attrs) + "]");
    }
    const lines = ["digraph tinygrad_tx {",
      "graph [" + attrList({ ...DATA.graph_attrs, rankdir: "TB" }) + "]",
      "node [" + attrList(DATA.node_attrs) + "]",
      "edge [" + attrList(DATA.edge_attrs) + "]"];
    for (const line of members.get("") || []) lines.push(line);
    const walk = [...(children.get("") || [])].reverse().map((p) => [p, false]);   // a stack, no recursion
    while (walk.length) {
      const [path, closing] = walk.pop();
      if (closing) { lines.push("}"); continue; }
      const m = view.modules[path];
      lines.push("subgraph " + quote("cluster_" + path) + " {");
      lines.push("graph [" + attrList({ ...m.cluster, id: "c:" + path }) + "]");
      for (const line of members.get(path) || []) lines.push(line);
      walk.push([path, true]);
      for (const child of [...(children.get(path) || [])].reverse()) walk.push([child, false]);
    }
    for (const [src, dst, text] of g.edges) {
      lines.push(quote(src) + " -> " + quote(dst) + (text ? " [label=" + quote(text) + "]" : ""));
    }
    lines.push("}");
    return lines.join("\n");
  }

  // ------------------------------------------------------------------ drawing
  function setStatus(text, miss) {
    $("status").textContent = text;
    $("status").classList.toggle("miss", !!miss);
  }

  // The drawing moves inside #graph by a CSS transform: drag to pan, the wheel zooms around the pointer.
  function applyZoom() {
    const svg = graphBox.querySelector("svg");
    if (!svg || !svgSize) return;
    svg.style.width = svgSize.w + "px";
    svg.style.height = svgSize.h + "px";
    svg.style.transform = `translate(${state.pan.x}px, ${state.pan.y}px) scale(${state.zoom})`;
  }

  function fitZoom() {
    if (!svgSize) return 1;
    const z = Math.min(graphBox.clientWidth / svgSize.w, graphBox.clientHeight / svgSize.h, 1);
    return Math.max(z, 0.05);
  }

  function zoomAround(factor, x, y) {  // x, y: a point of #graph that stays where it is
    const z = Math.min(Math.max(state.zoom * factor, 0.05), 8);
    state.pan.x = x - ((x - state.pan.x) * z) / state.zoom;
    state.pan.y = y - ((y - state.pan.y) * z) / state.zoom;
    state.zoom = z;
    applyZoom();
  }

  function fit() {
    state.zoom = fitZoom();
    state.pan = { x: (graphBox.clientWidth - svgSize.w * state.zoom) / 2, y: 8 };
    applyZoom();
  }

  function render() {
    const view = currentView();
    const g = visibleGraph(view);
    const count = g.nodes.length + g.boxes.length;
    const svg = viz.renderSVGElement(toDot(view, g));
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    const box = svg.viewBox.baseVal;
    svgSize = { w: box.width * 4 / 3, h: box.height * 4 / 3 };      // points -> CSS px
    graphBox.replaceChildren(svg);
    if (state.renders === 0) {            // open readable: fit the page, but never smaller than 60%
      fit();
      if (state.zoom < 0.6) { state.zoom = 0.6; state.pan = { x: 8, y: 8 }; }
    }
    applyZoom();
    state.renders += 1;
    markSelection();
    setStatus(`${state.view}: ${count} nodes, ${g.edges.length} edges` + (view.note ? ` \u2014 ${view.note}` : ""));
    document.querySelectorAll("#depths button").forEach((b) => b.classList.toggle("on", depthShown() === b.dataset.depth));
    return svg;
  }

  function depthShown() {        // the depth button that matches the open modules, if one does
    const modules = allModules();
    const levels = [...modules.values()].map((m) => m.level);
    const deepest = Math.max(-1, ...levels);
    for (let d = 0; d <= deepest; d++) {
      let same = true;
      for (const [path, m] of modules) if ((m.level <= d) !== state.expanded.has(path)) { same = false; break; }
      if (same) return d === deepest ? "all" : String(d);
    }
    return null;
  }

  function markSelection() {
    graphBox.querySelectorAll(".selected, .hit").forEach((el) => el.classList.remove("selected", "hit"));
    if (state.selected) {
      const el = document.getElementById(state.selected.element);
      if (el) el.classList.add("selected");
    }
    if (state.hit) {
      const el = document.getElementById(state.hit);
      if (el) el.classList.add("hit");
    }
  }

  function centreOn(el) {
    const r = el.getBoundingClientRect(), c = graphBox.getBoundingClientRect();
    state.pan.x += (c.left + c.width / 2) - (r.left + r.width / 2);
    state.pan.y += (c.top + c.height / 2) - (r.top + r.height / 2);
    applyZoom();
  }

  // ------------------------------------------------------------------ the side panel
  function fmt(x) {
    if (x === null || x === undefined) return "-";
    if (x === 0) return "0";
    const a = Math.abs(x);
    return a >= 1e4 || a < 1e-3 ? x.toExponential(3) : x.toPrecision(4);
  }

  function histogram(summary, cls, title) {
    const div = document.createElement("div");
    div.className = "stats " + cls;
    if (!summary) return div;
    const head = document.createElement("div");
    head.textContent = `${title}: min ${fmt(summary.min)}  mean ${fmt(summary.mean)}  max ${fmt(summary.max)}` +
      `  norm ${fmt(summary.norm)}  (${summary.size} values)`;
    div.appendChild(head);
    if (!summary.hist) return div;
    const W = 320, H = 60, counts = summary.hist.counts, top = Math.max(...counts, 1);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H + 14);
    counts.forEach((c, i) => {
      const r = document.createElementNS(ns, "rect");
      const w = W / counts.length;
      r.setAttribute("x", i * w + 0.5);
      r.setAttribute("width", Math.max(w - 1, 1));
      r.setAttribute("y", H - (H * c) / top);
      r.setAttribute("height", (H * c) / top);
      const t = document.createElementNS(ns, "title");
      t.textContent = `${c} values`;
      r.appendChild(t);
      svg.appendChild(r);
    });
    for (const [x, anchor, text] of [[0, "start", fmt(summary.hist.lo)], [W, "end", fmt(summary.hist.hi)]]) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", x);
      t.setAttribute("y", H + 12);
      t.setAttribute("text-anchor", anchor);
      t.setAttribute("class", "axis");
      t.textContent = text;
      svg.appendChild(t);
    }
    div.appendChild(svg);
    return div;
  }

  function showDetails(item) {
    const panel = $("details");
    panel.replaceChildren();
    if (!item) return;
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = item.label;
    panel.appendChild(title);
    const table = document.createElement("table");
    for (const [key, value] of item.rows) {
      const tr = table.insertRow();
      tr.insertCell().textContent = key;
      tr.insertCell().textContent = value;
    }
    panel.appendChild(table);
    if (item.values) panel.appendChild(histogram(item.values, "values", "values"));
    if (item.grad) panel.appendChild(histogram(item.grad, "grad", "gradient"));
  }

  function itemOf(el) {          // the vertex or module behind an SVG element id
    const view = currentView();
    if (el.id.startsWith("n:box:") || el.id.startsWith("c:")) {
      const path = el.id.startsWith("c:") ? el.id.slice(2) : el.id.slice(6);
      return { kind: "module", path, data: view.modules[path] };
    }
    const id = el.id.slice(2);
    return { kind: "vertex", id, data: view.vertices.find((v) => v.id === id) };
  }

  // ------------------------------------------------------------------ search
  function searchIndex() {
    const names = new Set();
    for (const view of Object.values(DATA.views)) {
      for (const path of Object.keys(view.modules)) names.add(path);
      for (const v of view.vertices) if (v.name) names.add(v.name);
    }
    return [...names].sort();
  }

  function find(query) {         // the element id to highlight, after opening the modules around it
    const view = currentView();
    const q = query.trim();
    if (!q) return null;
    const lower = q.toLowerCase();
    const modules = Object.keys(view.modules);
    let path = modules.find((p) => p === q) || modules.find((p) => p.toLowerCase().includes(lower));
    if (path !== undefined) {
      for (const s of chain(view, view.modules[path].parent)) state.expanded.add(s);
      return state.expanded.has(path) ? "c:" + path : "n:box:" + path;
    }
    const v = view.vertices.find((x) => x.name === q) ||
      view.vertices.find((x) => (x.name || x.label).toLowerCase().includes(lower));
    if (v === undefined) return null;
    for (const s of chain(view, v.scope)) state.expanded.add(s);
    return "n:" + v.id;
  }

  function search(query) {
    const target = find(query);
    if (target === null) {
      state.hit = null;
      markSelection();
      setStatus(`no node or module matches "${query}"`, true);
      return null;
    }
    state.hit = target;
    render();
    const el = document.getElementById(target);
    if (el) centreOn(el);
    const item = el ? itemOf(el) : null;
    const what = item && item.kind === "vertex" ? item.data.name || item.data.label.split("\n")[0] : item && item.path;
    setStatus(`found ${what}`);
    return el;
  }

  // ------------------------------------------------------------------ attention heatmaps
  function drawAttention() {
    const maps = DATA.attention;
    const layer = maps[Number($("attention-layer").value)];
    const headSelect = $("attention-head");
    if (headSelect.options.length !== layer.heads.length) {
      headSelect.replaceChildren(...layer.heads.map((_, h) => new Option(String(h), String(h))));
    }
    const weights = layer.heads[Number(headSelect.value) || 0];
    const table = document.createElement("table");
    const head = table.insertRow();
    head.appendChild(document.createElement("th"));
    for (const k of layer.keys) {
      const th = document.createElement("th");
      th.className = "key";
      th.textContent = k;
      head.appendChild(th);
    }
    weights.forEach((row, i) => {
      const tr = table.insertRow();
      const th = document.createElement("th");
      th.className = "query";
      th.textContent = layer.queries[i];
      tr.appendChild(th);
      row.forEach((w, j) => {
        const td = tr.insertCell();
        const shade = Math.round(255 * (1 - w));
        td.style.background = `rgb(${shade}, ${shade}, 255)`;
        td.title = `${layer.queries[i]} \u2192 ${layer.keys[j]}: ${w.toFixed(3)}`;
      });
    });
    $("attention-map").replaceChildren(table);
  }

  function setUpAttention() {
    if (!DATA.attention || DATA.attention.length === 0) return;
    $("attention").hidden = false;
    $("attention-sentence").textContent = DATA.attention_caption || "";
    $("attention-layer").replaceChildren(...DATA.attention.map((a, i) => new Option(a.name, String(i))));
    $("attention-layer").addEventListener("change", () => { $("attention-head").replaceChildren(); drawAttention(); });
    $("attention-head").addEventListener("change", drawAttention);
    drawAttention();
  }

  // ------------------------------------------------------------------ wiring
  function setUp() {
    $("title").textContent = DATA.title;
    const deepest = Math.max(0, ...[...allModules().values()].map((m) => m.level));
    const depths = [];
    for (let d = 0; d <= deepest; d++) depths.push(String(d));
    depths[depths.length - 1] = "all";
    $("depths").replaceChildren(...depths.map((d) => {
      const b = document.createElement("button");
      b.dataset.depth = d;
      b.textContent = d;
      b.addEventListener("click", () => { setDepth(d === "all" ? Infinity : Number(d)); render(); });
      return b;
    }));
    for (const b of document.querySelectorAll("button.view")) {
      b.disabled = !DATA.views[b.dataset.view];
      if (b.disabled) b.title = "the root does not require grad: there is no backward pass";
      b.addEventListener("click", () => {
        state.view = b.dataset.view;
        document.querySelectorAll("button.view").forEach((x) => x.classList.toggle("on", x === b));
        state.selected = null;
        render();
      });
    }
    $("view-forward").classList.add("on");
    $("names").replaceChildren(...searchIndex().map((n) => new Option(n)));
    $("search").addEventListener("keydown", (e) => { if (e.key === "Enter") search(e.target.value); });
    $("search").addEventListener("change", (e) => search(e.target.value));
    const middle = () => [graphBox.clientWidth / 2, graphBox.clientHeight / 2];
    $("zoom-in").addEventListener("click", () => zoomAround(1.25, ...middle()));
    $("zoom-out").addEventListener("click", () => zoomAround(1 / 1.25, ...middle()));
    $("zoom-fit").addEventListener("click", fit);
    graphBox.addEventListener("wheel", (e) => {
      e.preventDefault();
      const c = graphBox.getBoundingClientRect();
      zoomAround(Math.exp(-e.deltaY * 0.0015), e.clientX - c.left, e.clientY - c.top);
    }, { passive: false });
    let drag = null;                       // {x, y, moved}: a press on the drawing, until released
    graphBox.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: false }; });
    window.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      drag.moved = true;
      graphBox.classList.add("dragging");
      state.pan.x += dx;
      state.pan.y += dy;
      drag.x = e.clientX;
      drag.y = e.clientY;
      applyZoom();
    });
    window.addEventListener("pointerup", () => {
      graphBox.classList.remove("dragging");
      if (drag && drag.moved) graphBox.dataset.dragged = "true";     // the click that ends a drag is not a click
      drag = null;
    });
    graphBox.addEventListener("click", (e) => {
      if (graphBox.dataset.dragged) { delete graphBox.dataset.dragged; return; }
      const node = e.target.closest("g.node");
      const cluster = node ? null : e.target.closest("g.cluster");
      const el = node || cluster;
      if (!el) return;
      const item = itemOf(el);
      if (item.kind === "module" && (cluster || el.id.startsWith("n:box:"))) {
        if (cluster) state.expanded.delete(item.path);     // a click on an open module's frame folds it
        else state.expanded.add(item.path);                 // a click on a folded box opens it
        state.selected = null;
        render();
        showDetails(item.data);
        return;
      }
      state.selected = { element: el.id, item };
      markSelection();
      showDetails(item.data);
    });
    graphBox.addEventListener("mouseover", (e) => {
      const el = e.target.closest("g.node") || e.target.closest("g.cluster");
      if (el) showDetails(itemOf(el).data);
    });
    graphBox.addEventListener("mouseleave", () => showDetails(state.selected ? state.selected.item.data : null));
    setUpAttention();

    let depth = DATA.start_depth;
    if (depth === null || depth === undefined) {
      depth = 0;
      for (let d = deepest; d >= 0; d--) {
        setDepth(d);
        if (countVisible(currentView()) <= AUTO_NODES) { depth = d; break; }
      }
    }
    setDepth(depth >= deepest ? Infinity : depth);
  }

  setUp();
  setStatus("loading the layout engine\u2026");
  const ready = Viz.instance().then((instance) => {
    viz = instance;
    render();
    performance.mark("tx-graph-drawn");
    document.body.dataset.ready = "true";
  }).catch((err) => {
    setStatus("could not draw the graph: " + err, true);
    throw err;
  });

  // For scripts and tests: the state, and the actions a click or a key would take.
  window.txExplorer = { state, ready, render, search, setDepth, visibleGraph, currentView, toDot };
})();
