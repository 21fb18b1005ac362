// Refresh the runs table in place every second, keeping open step details open.
(function () {
  const body = document.getElementById("runs-body");
  if (!body) return;
  async function refresh() {
    const open = new Set(
      [...body.querySelectorAll("details[open]")].map(
        (d) => d.closest("tr").dataset.runId + ":" + d.querySelector("summary").textContent
      )
    );
    try {
      const response = await fetch("/runs/table" + window.location.search);
      if (response.ok) {
        body.innerHTML = await response.text();
        body.querySelectorAll("details").forEach((d) => {
          const key = d.closest("tr").dataset.runId + ":" + d.querySelector("summary").textContent;
          if (open.has(key)) d.open = true;
        });
      }
    } finally {
      setTimeout(refresh, 1000);
    }
  }
  setTimeout(refresh, 1000);
})();
