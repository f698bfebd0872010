// One trace: the span tree and the waterfall side by side, drawn virtually (only the rows in view
// exist in the page, so traces of any size open), zoom and pan on the time axis, errors, running
// spans drawn to now, a cost heat map, the span panel and the conversation tab.
"use strict";

(function () {
  const ROW = 24;
  const OVERSCAN = 12;
  const el = (id) => document.getElementById(id);
  const scroller = el("scroller"), canvas = el("canvas"), axis = el("axis"), panel = el("panel");
  if (!scroller) return;
  let data = JSON.parse(el("trace-data").textContent);
  const options = JSON.parse(el("trace-options").textContent);
  const traceId = data.trace_id;

  let nodes = new Map(), roots = [], visible = [], indexOf = new Map();
  let selected = null, heat = false, domainEnd = 1, maxCost = 0, running = false;
  let view = null; // {from, to} in ms after the trace's start
  let loadedAt = performance.now(), serverNow = data.now_ms || 0;
  const closed = new Set();

  const now = () => serverNow + (performance.now() - loadedAt);
  const end = (s) => (s.duration_ms == null ? Math.max(now(), s.start_ms || 0) : (s.start_ms || 0) + s.duration_ms);

  function build() {
    nodes = new Map();
    roots = [];
    for (const s of data.spans) nodes.set(s.span_id, { s, children: [], parent: null });
    for (const node of nodes.values()) {
      const parent = node.s.parent_id && node.s.parent_id !== node.s.span_id ? nodes.get(node.s.parent_id) : null;
      if (parent) { parent.children.push(node); node.parent = parent; } else roots.push(node);
    }
    running = data.spans.some((s) => s.duration_ms == null);
    domainEnd = data.spans.reduce((m, s) => Math.max(m, end(s)), 1e-3);
    maxCost = data.spans.reduce((m, s) => (s.kind === "LLM" && s.cost ? Math.max(m, s.cost) : m), 0);
    if (!view) view = fitted();
    el("span-count").textContent = `(${data.spans.length.toLocaleString()})`;
    flatten();
  }

  function flatten() {
    visible = [];
    indexOf = new Map();
    const seen = new Set();
    const stack = roots.slice().reverse().map((n) => [n, 0]);
    while (stack.length) {
      const [node, depth] = stack.pop();
      if (seen.has(node.s.span_id)) continue; // a parent cycle in bad data
      seen.add(node.s.span_id);
      indexOf.set(node.s.span_id, visible.length);
      visible.push([node, depth]);
      if (!closed.has(node.s.span_id)) {
        for (let i = node.children.length - 1; i >= 0; i--) stack.push([node.children[i], depth + 1]);
      }
    }
    canvas.style.height = `${visible.length * ROW}px`;
  }

  function fmt(ms) {
    if (ms == null) return "";
    const a = Math.abs(ms);
    if (a >= 3600000) return `${(ms / 3600000).toFixed(1)} h`;
    if (a >= 60000) return `${(ms / 60000).toFixed(1)} min`;
    if (a >= 1000) return `${(ms / 1000).toFixed(a >= 10000 ? 1 : 2)} s`;
    return a >= 10 || a === 0 ? `${ms.toFixed(0)} ms` : `${ms.toFixed(1)} ms`;
  }

  function heatColor(cost) {
    const x = Math.sqrt(cost / (maxCost || 1));
    const stops = [[253, 231, 37], [94, 201, 98], [33, 145, 140], [68, 1, 84]].reverse();
    const t = Math.min(0.999, Math.max(0, x)) * (stops.length - 1);
    const i = Math.floor(t), f = t - i, a = stops[i], b = stops[i + 1];
    return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
  }

  function rowElement(node, depth, index) {
    const s = node.s;
    const row = document.createElement("div");
    row.className = "row" + (s.span_id === selected ? " selected" : "") + (s.status === "ERROR" ? " error" : "");
    row.style.top = `${index * ROW}px`;
    row.dataset.id = s.span_id;
    const tree = document.createElement("div");
    tree.className = "cell-tree";
    tree.style.paddingLeft = `${6 + Math.min(depth, 40) * 14}px`;
    const toggle = document.createElement("span");
    toggle.className = "toggle";
    if (node.children.length) toggle.textContent = closed.has(s.span_id) ? "▸" : "▾";
    const dot = document.createElement("span");
    dot.className = `dot k-${(s.kind || "span").toLowerCase()}`;
    dot.title = s.kind || "SPAN";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = s.name || "(unnamed)";
    name.title = s.name || "";
    const dur = document.createElement("span");
    dur.className = "dur";
    dur.textContent = s.duration_ms == null ? "running" : fmt(s.duration_ms);
    tree.append(toggle, dot, name);
    if (node.children.length && closed.has(s.span_id)) {
      const hidden = document.createElement("span");
      hidden.className = "hidden-count";
      hidden.textContent = `+${node.children.length}`;
      tree.append(hidden);
    }
    if (s.status === "ERROR") {
      const err = document.createElement("span");
      err.className = "err";
      err.textContent = "✕";
      err.title = s.status_message || "error";
      tree.append(err);
    }
    tree.append(dur);
    const cell = document.createElement("div");
    cell.className = "cell-bar";
    const bar = document.createElement("div");
    const start = s.start_ms || 0;
    const width = view.to - view.from;
    bar.className = `bar k-${(s.kind || "span").toLowerCase()}` + (s.status === "ERROR" ? " error" : "") +
      (s.duration_ms == null ? " running" : "");
    bar.style.left = `${((start - view.from) / width) * 100}%`;
    bar.style.width = `${((end(s) - start) / width) * 100}%`;
    if (heat) {
      if (s.kind === "LLM" && s.cost) bar.style.background = heatColor(s.cost);
      else bar.classList.add("dim");
    }
    const tip = [s.name || "", fmt(end(s) - start)];
    if (s.tokens) tip.push(`${s.tokens.toLocaleString()} tokens`);
    if (s.cost) tip.push(`$${s.cost.toFixed(4)}`);
    if (s.status === "ERROR" && s.status_message) tip.push(s.status_message);
    bar.title = tip.join(" · ");
    cell.append(bar);
    row.append(tree, cell);
    return row;
  }

  let frame = 0;
  function render() {
    frame = 0;
    const top = scroller.scrollTop, height = scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(visible.length, Math.ceil((top + height) / ROW) + OVERSCAN);
    const rows = [];
    for (let i = first; i < last; i++) rows.push(rowElement(visible[i][0], visible[i][1], i));
    canvas.replaceChildren(...rows);
    drawAxis();
  }
  const schedule = () => { if (!frame) frame = requestAnimationFrame(render); };

  function drawAxis() {
    const width = axis.clientWidth || 600;
    const span = view.to - view.from;
    const raw = span / Math.max(1, width / 110);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((v) => v >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(view.from / step) * step; t <= view.to; t += step) {
      const tick = document.createElement("span");
      tick.className = "tick";
      tick.style.left = `${((t - view.from) / span) * 100}%`;
      tick.textContent = fmt(t);
      ticks.push(tick);
      if (ticks.length > 200) break;
    }
    axis.replaceChildren(...ticks);
  }

  // The whole trace, with a little room at the ends so the first and last spans are not cut.
  function fitted() {
    return { from: -domainEnd * 0.01, to: domainEnd * 1.02 };
  }

  function clampView(from, to) {
    const span = Math.min(Math.max(to - from, domainEnd * 1e-5, 1e-3), domainEnd * 1.8);
    const margin = domainEnd / 4;
    from = Math.min(Math.max(from, -margin), domainEnd + margin - span);
    view = { from, to: from + span };
    schedule();
  }
  function zoom(factor, anchor) {
    const at = anchor == null ? (view.from + view.to) / 2 : anchor;
    clampView(at - (at - view.from) * factor, at + (view.to - at) * factor);
  }
  function barPosition(clientX) {
    const cell = canvas.querySelector(".cell-bar") || axis;
    const rect = cell.getBoundingClientRect();
    if (clientX < rect.left) return null;
    return view.from + ((clientX - rect.left) / rect.width) * (view.to - view.from);
  }

  function ensureVisible(spanId) {
    let node = nodes.get(spanId);
    if (!node) return false;
    let changed = false;
    for (let p = node.parent; p; p = p.parent) if (closed.delete(p.s.span_id)) changed = true;
    if (changed) flatten();
    return true;
  }

  let panelRequest = 0;
  async function select(spanId, { scroll = true, remember = true } = {}) {
    if (!ensureVisible(spanId)) return;
    selected = spanId;
    const index = indexOf.get(spanId);
    if (scroll && index != null) {
      const top = index * ROW, height = scroller.clientHeight;
      if (top < scroller.scrollTop || top > scroller.scrollTop + height - ROW) {
        scroller.scrollTop = Math.max(0, top - height / 3);
      }
    }
    render();
    if (remember) {
      const url = new URL(window.location.href);
      url.searchParams.set("span", spanId);
      history.replaceState(null, "", url);
    }
    const request = ++panelRequest;
    try {
      const doc = await halo.fetchHTML(`/traces/${encodeURIComponent(traceId)}/spans/${encodeURIComponent(spanId)}`);
      if (request !== panelRequest) return;
      const article = doc.querySelector("article");
      if (article) panel.replaceChildren(document.adoptNode(article));
    } catch (e) {
      if (request !== panelRequest) return;
      const p = document.createElement("p");
      p.className = "bad";
      p.textContent = `Could not load the span: ${e.message}`;
      panel.replaceChildren(p);
    }
  }

  // --- events ---
  scroller.addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", schedule);
  canvas.addEventListener("click", (event) => {
    const row = event.target.closest(".row");
    if (!row) return;
    const id = row.dataset.id;
    if (event.target.classList.contains("toggle") && nodes.get(id).children.length) {
      if (!closed.delete(id)) closed.add(id);
      flatten();
      schedule();
      return;
    }
    select(id, { scroll: false });
  });
  canvas.addEventListener("dblclick", (event) => {
    const row = event.target.closest(".row");
    if (!row) return;
    const s = nodes.get(row.dataset.id).s;
    const start = s.start_ms || 0, stop = end(s), pad = (stop - start) * 0.05 || 1;
    clampView(start - pad, stop + pad);
  });
  scroller.addEventListener("wheel", (event) => {
    if (event.ctrlKey || event.metaKey) {
      event.preventDefault();
      zoom(Math.exp(event.deltaY * 0.002), barPosition(event.clientX));
    } else if (event.shiftKey || Math.abs(event.deltaX) > Math.abs(event.deltaY)) {
      event.preventDefault();
      const delta = (event.shiftKey ? event.deltaY : event.deltaX) / (axis.clientWidth || 600);
      clampView(view.from + delta * (view.to - view.from), view.to + delta * (view.to - view.from));
    }
  }, { passive: false });
  let drag = null;
  canvas.addEventListener("mousedown", (event) => {
    if (!event.target.closest(".cell-bar") || event.button !== 0) return;
    drag = { x: event.clientX, from: view.from, to: view.to, moved: false };
  });
  window.addEventListener("mousemove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x;
    if (Math.abs(dx) > 3) drag.moved = true;
    const shift = (dx / (axis.clientWidth || 600)) * (drag.to - drag.from);
    clampView(drag.from - shift, drag.to - shift);
  });
  window.addEventListener("mouseup", () => { drag = null; });
  scroller.addEventListener("keydown", (event) => {
    const index = selected == null ? -1 : indexOf.get(selected);
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const next = visible[Math.min(visible.length - 1, Math.max(0, index + (event.key === "ArrowDown" ? 1 : -1)))];
      if (next) select(next[0].s.span_id);
    } else if ((event.key === "ArrowLeft" || event.key === "ArrowRight") && selected) {
      event.preventDefault();
      if (event.key === "ArrowLeft") closed.add(selected); else closed.delete(selected);
      flatten();
      schedule();
    }
  });
  for (const button of document.querySelectorAll("[data-zoom]")) {
    button.addEventListener("click", () => {
      const how = button.dataset.zoom;
      if (how === "fit") { view = fitted(); schedule(); }
      else zoom(how === "in" ? 0.5 : 2);
    });
  }
  el("heat").addEventListener("change", (event) => { heat = event.target.checked; schedule(); });

  // --- tabs: timeline and conversation ---
  const conversation = el("conversation");
  let conversationLoaded = false;
  async function showTab(name) {
    for (const b of document.querySelectorAll("[data-tab]")) b.classList.toggle("on", b.dataset.tab === name);
    el("timeline").hidden = name !== "timeline";
    conversation.hidden = name !== "conversation";
    el("zoom-controls").classList.toggle("inactive", name !== "timeline");
    if (name === "timeline") schedule();
    if (name === "conversation" && !conversationLoaded) {
      conversationLoaded = true;
      try {
        const doc = await halo.fetchHTML(conversation.dataset.url);
        conversation.replaceChildren(document.adoptNode(doc.querySelector(".convo")));
      } catch (e) {
        conversationLoaded = false;
        conversation.textContent = `Could not load the conversation: ${e.message}`;
      }
    }
  }
  for (const b of document.querySelectorAll("[data-tab]")) b.addEventListener("click", () => showTab(b.dataset.tab));
  conversation.addEventListener("click", (event) => {
    const link = event.target.closest("a.span-link");
    if (!link) return;
    event.preventDefault();
    showTab("timeline");
    select(link.dataset.span);
  });

  // --- live: running traces grow, and "follow latest" moves to each new trace ---
  const follow = el("follow");
  async function refresh() {
    if (follow.checked) {
      const latest = await halo.fetchJSON("/traces/latest.json");
      if (latest.trace_id && latest.trace_id !== traceId) {
        window.location.assign(`/traces/${encodeURIComponent(latest.trace_id)}?follow=1`);
        return;
      }
    }
    const fresh = await halo.fetchJSON(`/traces/${encodeURIComponent(traceId)}.json`);
    data = fresh.spans;
    serverNow = data.now_ms || serverNow;
    loadedAt = performance.now();
    const wasFitted = view.from <= 0 && view.to >= domainEnd;
    build();
    if (wasFitted) view = fitted();
    schedule();
  }
  document.addEventListener("halo:store", halo.throttle(refresh, 1000));
  follow.addEventListener("change", () => {
    const url = new URL(window.location.href);
    if (follow.checked) url.searchParams.set("follow", "1"); else url.searchParams.delete("follow");
    history.replaceState(null, "", url);
    if (follow.checked) refresh();
  });
  setInterval(() => {
    if (!running) return;
    domainEnd = data.spans.reduce((m, s) => Math.max(m, end(s)), domainEnd);
    schedule();
  }, 1000);

  build();
  render();
  if (options.selected && nodes.has(options.selected)) select(options.selected, { remember: false });
  performance.mark("halo-trace-drawn"); // for benchmarks/web_bench.py: first paint of the tree
  document.body.dataset.ready = "1";
})();
