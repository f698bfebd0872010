// One analysis, live: the agent tree (state, current tool, turns, tokens, cost), the root agent's
// streaming text, and a reload when the turn ends so its report shows.
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("run-data").textContent);
  const ACTIVE = new Set(["queued", "exporting", "running"]);
  const tree = document.getElementById("agent-tree");
  const status = document.getElementById("run-status");
  let current = data.status;

  function text(tag, className, value) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.textContent = value;
    return node;
  }

  function renderTree(agents) {
    if (!agents.length) return;
    const empty = document.getElementById("no-agents");
    if (empty) empty.remove();
    const children = new Map();
    for (const agent of agents) {
      const key = agent.parent || "";
      if (!children.has(key)) children.set(key, []);
      children.get(key).push(agent);
    }
    const known = new Set(agents.map((a) => a.agent_id));
    function list(parent) {
      const ul = document.createElement("ul");
      for (const agent of children.get(parent) || []) {
        const li = document.createElement("li");
        li.dataset.agent = agent.agent_id;
        const line = document.createElement("div");
        line.className = "agent";
        line.append(text("b", "", agent.name), text("span", `state ${agent.status}`, agent.status));
        if (agent.tool) line.append(text("code", "", `→ ${agent.tool}`));
        line.append(text("span", "muted small",
          `${agent.turns} turns · ${agent.tool_calls} tool calls · ${agent.tokens.toLocaleString()} tokens · $${agent.cost.toFixed(4)}`));
        li.append(line);
        if (children.has(agent.agent_id)) li.append(list(agent.agent_id));
        ul.append(li);
      }
      return ul;
    }
    const roots = agents.filter((a) => !a.parent || !known.has(a.parent)).map((a) => a.parent || "");
    const top = document.createElement("ul");
    for (const parent of new Set(roots)) for (const li of Array.from(list(parent).children)) top.append(li);
    tree.replaceChildren(...top.children);
    const root = agents.find((a) => !a.parent);
    const stream = document.getElementById("stream");
    if (stream && root) {
      stream.textContent = root.text;
      stream.scrollTop = stream.scrollHeight;
    }
  }

  document.addEventListener("halo:run", (event) => {
    const update = event.detail;
    if (update.run_id !== data.run_id) return;
    renderTree(update.agents || []);
    status.textContent = update.status;
    status.className = `status ${update.status}`;
    status.dataset.status = update.status;
    if (ACTIVE.has(current) && !ACTIVE.has(update.status)) {
      window.location.reload();
    } else if (!ACTIVE.has(current) && ACTIVE.has(update.status)) {
      window.location.reload(); // a follow-up or retry started elsewhere
    }
    current = update.status;
  });

  renderTree(data.agents || []);
  document.body.dataset.ready = "1";
})();
