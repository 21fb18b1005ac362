// What every page shares. No inline script anywhere (the CSP forbids it).
(function () {
  // Times arrive as <time datetime="...Z"> in UTC; show them in the reader's zone, naming it.
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
  function localTimes(root) {
    root.querySelectorAll("time[datetime]:not([data-local])").forEach((el) => {
      const when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      el.title = el.textContent + " (" + zone + ")";
      el.textContent = format.format(when);
      el.dataset.local = "1";
    });
  }
  window.heraldLocalTimes = localTimes;
  localTimes(document);
  // A select marked data-autosubmit submits its form when changed.
  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
    const button = select.form.querySelector("button");
    if (button) button.hidden = true;
  });
  // Buttons with data-confirm ask first.
  document.querySelectorAll("[data-confirm]").forEach((el) => {
    el.addEventListener("click", (event) => {
      if (!window.confirm(el.dataset.confirm)) event.preventDefault();
    });
  });
})();
