// The compare page: while a comparison runs, show what it is doing, and reload when it ends (told by
// the live stream; a slow poll of the JSON twin covers a stream that is down).
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("compare-status");
  if (!status || status.dataset.status !== "running") return;
  const run = status.dataset.run;
  const stage = document.getElementById("compare-stage");
  let done = false;
  function update(data) {
    if (done || !data || data.run_id !== run) return;
    if (data.status === "running") {
      if (stage && data.stage) stage.textContent = data.stage;
      return;
    }
    done = true;
    window.location.reload();
  }
  document.addEventListener("halo:compare", (event) => update(event.detail));
  const poll = setInterval(async () => {
    if (done) { clearInterval(poll); return; }
    try {
      const data = await halo.fetchJSON(`/compare.json?run=${encodeURIComponent(run)}`);
      update({ run_id: run, status: data.status, stage: data.stage });
    } catch (error) { /* the next poll tries again */ }
  }, 3000);
});
