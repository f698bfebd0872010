// HALO's pages: live updates, the trace list's filters, "load more", follow latest, copy buttons.
// Trace text never goes through innerHTML here except as HTML the server rendered (and escaped).
"use strict";

const halo = (window.halo = window.halo || {});

halo.fetchHTML = async function (url) {
  const response = await fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" });
  if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
  return new DOMParser().parseFromString(await response.text(), "text/html");
};

halo.fetchJSON = async function (url, options = {}) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status}`);
  return data;
};

// One EventSource per page; its events are re-dispatched on document as "halo:<topic>".
halo.live = (function () {
  const status = () => document.getElementById("live-status");
  let source = null;
  function connect() {
    // Events since this page was rendered are replayed, so nothing that happened meanwhile is missed.
    const since = document.body.dataset.lastEvent || "";
    source = new EventSource(since ? `/live?last_event_id=${encodeURIComponent(since)}` : "/live");
    source.onopen = () => status() && status().classList.remove("off");
    source.onerror = () => status() && status().classList.add("off");
    for (const topic of ["store", "job", "run", "compare"]) {
      source.addEventListener(topic, (event) => {
        let data = null;
        try { data = JSON.parse(event.data); } catch (e) { return; }
        document.dispatchEvent(new CustomEvent(`halo:${topic}`, { detail: data }));
      });
    }
  }
  document.addEventListener("DOMContentLoaded", connect);
  window.addEventListener("pagehide", () => source && source.close());
  return { get source() { return source; } };
})();

// Calls `fn` at most once per `ms`, and once more after the last call.
halo.throttle = function (fn, ms) {
  let waiting = false, again = false;
  return function run() {
    if (waiting) { again = true; return; }
    waiting = true;
    Promise.resolve(fn()).finally(() => setTimeout(() => { waiting = false; if (again) { again = false; run(); } }, ms));
  };
};

function setupFilters() {
  const form = document.getElementById("filters");
  if (!form) return;
  form.addEventListener("change", (event) => {
    if (event.target.matches("input[type=checkbox], input[type=radio], select")) form.requestSubmit();
  });
  // Empty fields stay out of the address, so a shared link shows only the filters in use.
  form.addEventListener("formdata", (event) => {
    for (const [key, value] of Array.from(event.formData.entries())) {
      if (value === "") event.formData.delete(key);
    }
  });
}

function setupLoadMore() {
  const more = document.getElementById("load-more");
  const tbody = document.querySelector("#rows tbody");
  if (!more || !tbody) return;
  let loading = false;
  async function load(event) {
    if (event) event.preventDefault();
    const url = more.dataset.rowsUrl;
    if (!url || loading) return;
    loading = true;
    more.textContent = "Loading…";
    try {
      const doc = await halo.fetchHTML(url);
      const table = doc.querySelector("table");
      const seen = new Set(Array.from(tbody.rows, (row) => row.dataset.key));
      for (const row of Array.from(table.querySelectorAll("tbody tr"))) {
        if (!seen.has(row.dataset.key)) tbody.appendChild(document.adoptNode(row));
      }
      more.dataset.rowsUrl = table.dataset.nextUrl || "";
      document.getElementById("more").hidden = !more.dataset.rowsUrl;
    } finally {
      loading = false;
      more.textContent = "Load more";
    }
  }
  more.addEventListener("click", load);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) load();
    }, { rootMargin: "400px" }).observe(document.getElementById("more"));
  }
}

function setupLiveList() {
  const table = document.getElementById("rows");
  if (!table) return;
  const tbody = table.querySelector("tbody");
  async function refreshRows() {
    if (table.dataset.live !== "1") return;
    const doc = await halo.fetchHTML(table.dataset.liveUrl);
    const known = new Map(Array.from(tbody.rows, (row) => [row.dataset.key, row]));
    const anchor = tbody.firstChild;
    for (const row of Array.from(doc.querySelectorAll("tbody tr"))) {
      const old = known.get(row.dataset.key);
      const node = document.adoptNode(row);
      if (old) {
        if (old.textContent !== node.textContent) { old.replaceWith(node); node.classList.add("fresh"); }
        continue;
      }
      node.classList.add("fresh");
      tbody.insertBefore(node, anchor);
    }
    document.querySelectorAll("p.empty").forEach((p) => { if (tbody.rows.length) p.remove(); });
  }
  async function refreshStrip() {
    const strip = document.getElementById("strip");
    if (!strip || !table.dataset.stripUrl) return;
    const doc = await halo.fetchHTML(table.dataset.stripUrl);
    const fresh = doc.querySelector(".strip");
    if (fresh) strip.replaceChildren(document.adoptNode(fresh));
  }
  // New rows first (what a watcher waits for), then the totals.
  const refresh = halo.throttle(() => Promise.all([refreshRows(), refreshStrip()]), 500);
  document.addEventListener("halo:store", refresh);
}

function setupFollowLatest() {
  const box = document.getElementById("follow-latest");
  const table = document.getElementById("rows");
  if (!box || !table) return;
  async function open() {
    const data = await halo.fetchJSON(table.dataset.latestUrl);
    if (data.trace_id) window.location.assign(`/traces/${encodeURIComponent(data.trace_id)}?follow=1`);
    else box.parentElement.dataset.waiting = "Waiting for the next trace…";
  }
  box.addEventListener("change", () => { if (box.checked) open(); });
  document.addEventListener("halo:store", () => { if (box.checked) open(); });
}

function setupCopy() {
  for (const block of document.querySelectorAll("pre.copyable, [data-copy]")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.addEventListener("click", async () => {
      const text = block.dataset.copy !== undefined ? block.dataset.copy : block.textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (e) {
        button.textContent = "Select and copy by hand";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
    if (block.tagName === "PRE") block.before(button); else block.after(button);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupFilters();
  setupLoadMore();
  setupLiveList();
  setupFollowLatest();
  setupCopy();
});

// Sources: the jobs table follows each job's progress; an empty store's welcome page reloads when
// the first spans arrive.
document.addEventListener("DOMContentLoaded", () => {
  const jobs = document.getElementById("jobs");
  if (jobs) {
    document.addEventListener("halo:job", halo.throttle(async () => {
      const doc = await halo.fetchHTML(jobs.dataset.jobsUrl);
      const fresh = doc.querySelector(".jobs");
      if (fresh) jobs.replaceChildren(document.adoptNode(fresh));
    }, 300));
  }
  if (document.querySelector(".onboarding")) {
    document.addEventListener("halo:store", halo.throttle(() => window.location.reload(), 1000));
  }
});
