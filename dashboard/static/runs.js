// The runs list, live (first page only). Every 2 s it asks /runs/rows for runs newer
// than the newest shown (same filters) and for the unfinished runs shown; new rows go
// on top and only rows whose status changed are replaced, their open steps kept open.
// Nothing moves while the reader has text selected in the table, or has paused.
(function () {
  const table = document.getElementById("runs-table");
  if (!table || !table.hasAttribute("data-live")) return;
  const body = document.getElementById("runs-body");
  const button = document.getElementById("runs-pause");
  const updated = document.getElementById("runs-updated");
  const INTERVAL_MS = 2000;
  const MAX_IDS = 200;
  let paused = false;

  function shownRows() {
    return [...body.querySelectorAll("tr.run")];
  }

  function newestId() {
    return shownRows().reduce((most, row) => Math.max(most, Number(row.dataset.runId) || 0), 0);
  }

  function selecting() {
    const selection = window.getSelection();
    if (!selection || selection.isCollapsed || selection.rangeCount === 0) return false;
    return table.contains(selection.getRangeAt(0).commonAncestorContainer);
  }

  function rowsOf(html) {
    const holder = document.createElement("template");
    holder.innerHTML = html;
    return [...holder.content.querySelectorAll("tr.run")];
  }

  function rowsUrl(params) {
    const query = new URLSearchParams(window.location.search);
    query.delete("before");
    if (params.ids) {
      // Asking about runs already shown: only their ids (the viewer's tenants still apply).
      const tenant = query.get("tenant");
      return "/runs/rows?" + new URLSearchParams(tenant ? { tenant, ids: params.ids } : { ids: params.ids });
    }
    query.delete("after");
    if (params.after) query.set("after", params.after);
    return "/runs/rows?" + query.toString();
  }

  async function fetchRows(params) {
    const response = await fetch(rowsUrl(params), { headers: { Accept: "text/html" }, credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    return rowsOf(await response.text());
  }

  function openKeys(row) {
    return new Set([...row.querySelectorAll("details[open]")].map((d) => d.dataset.key));
  }

  function apply(fresh, changed) {
    const byId = new Map(shownRows().map((row) => [row.dataset.runId, row]));
    changed.forEach((row) => {
      const old = byId.get(row.dataset.runId);
      if (!old || old.dataset.status === row.dataset.status) return;
      const open = openKeys(old);
      row.querySelectorAll("details").forEach((d) => { if (open.has(d.dataset.key)) d.open = true; });
      old.replaceWith(row);
      if (window.heraldLocalTimes) window.heraldLocalTimes(row);
    });
    const added = fresh.filter((row) => !byId.has(row.dataset.runId));
    if (added.length) {
      body.querySelectorAll("tr.empty-row").forEach((row) => row.remove());
      body.prepend(...added);
      added.forEach((row) => { if (window.heraldLocalTimes) window.heraldLocalTimes(row); });
    }
  }

  async function refresh() {
    if (paused || document.hidden || selecting()) return;
    const unfinished = shownRows()
      .filter((row) => row.dataset.status === "pending" || row.dataset.status === "running")
      .slice(0, MAX_IDS).map((row) => row.dataset.runId);
    const newest = newestId();
    const [fresh, changed] = await Promise.all([
      fetchRows(newest ? { after: String(newest) } : {}),
      unfinished.length ? fetchRows({ ids: unfinished.join(",") }) : Promise.resolve([]),
    ]);
    if (paused || selecting()) return; // the reader began selecting meanwhile: try again later
    apply(fresh, changed);
    updated.textContent = "updated " + new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  async function loop() {
    try {
      await refresh();
    } catch (error) {
      updated.textContent = "could not update (" + error.message + "); trying again";
    } finally {
      setTimeout(loop, INTERVAL_MS);
    }
  }

  button.addEventListener("click", () => {
    paused = !paused;
    button.textContent = paused ? "Resume" : "Pause";
    button.setAttribute("aria-pressed", paused ? "true" : "false");
    updated.textContent = paused ? "paused" : "resuming…";
  });
  setTimeout(loop, INTERVAL_MS);
})();
