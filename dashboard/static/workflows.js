// The workflow editor: after a refused save, put the cursor on the line at fault.
(function () {
  const area = document.querySelector("textarea[data-error-line]");
  if (!area) return;
  const line = parseInt(area.dataset.errorLine, 10);
  if (!(line > 0)) return;
  const lines = area.value.split("\n");
  let start = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
  const end = start + (lines[line - 1] || "").length;
  area.focus();
  area.setSelectionRange(start, end);
  // Scroll the textarea so the line is in view (about one line height per line).
  const height = parseFloat(getComputedStyle(area).lineHeight) || 18;
  area.scrollTop = Math.max(0, (line - 3) * height);
})();
