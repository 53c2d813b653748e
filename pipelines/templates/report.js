// Sorts the issue stream by a row's data-* number (largest first); ties keep the events order.
(() => {
  const table = document.getElementById("issue-stream");
  if (!table) return;
  const body = table.tBodies[0];
  const buttons = document.querySelectorAll("#issue-sort button[data-sort]");
  for (const button of buttons) {
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      const rows = Array.from(body.rows);
      rows.sort((a, b) => Number(b.dataset[key]) - Number(a.dataset[key]) || Number(a.dataset.rank) - Number(b.dataset.rank));
      body.append(...rows);
      for (const other of buttons) other.setAttribute("aria-pressed", String(other === button));
    });
  }
})();
