// ptk report.html: sortable tables (click a header; again to reverse) and rows that expand to their cells.
(function () {
  "use strict";
  // a cell's value: its data-sort attribute (a number where it parses as one); "" sorts last either way
  function value(row, i) {
    var c = row && row.cells[i];
    if (!c) return null;
    var v = c.hasAttribute("data-sort") ? c.getAttribute("data-sort") : c.textContent.trim();
    if (v === "") return null;
    var n = Number(v);
    return isNaN(n) ? v : n;
  }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    if (typeof a === "number") return -1;  // numbers before text
    if (typeof b === "number") return 1;
    return String(a).localeCompare(String(b), undefined, {numeric: true, sensitivity: "base"});
  }
  function sortTable(table, i, th) {
    var grouped = table.classList.contains("grouped");
    var items = grouped ? Array.prototype.slice.call(table.tBodies)
                        : Array.prototype.slice.call(table.tBodies[0].rows);
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var keyed = items.map(function (el, pos) {
      return {el: el, v: value(grouped ? el.rows[0] : el, i), pos: pos};
    });
    keyed.sort(function (a, b) {
      if (a.v === null || b.v === null) {
        return a.v === b.v ? a.pos - b.pos : (a.v === null ? 1 : -1);
      }
      return dir * compare(a.v, b.v) || a.pos - b.pos;
    });
    var parent = grouped ? table : table.tBodies[0];
    keyed.forEach(function (k) { parent.appendChild(k.el); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  }
  function toggle(tr) {
    var detail = tr.nextElementSibling;
    if (!detail || !detail.classList.contains("detail")) return;
    detail.hidden = !detail.hidden;
    tr.setAttribute("aria-expanded", String(!detail.hidden));
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortTable(table, i, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortTable(table, i, th); });
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("tr.has-detail"), function (tr) {
    tr.addEventListener("click", function () { toggle(tr); });
    tr.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(tr); } });
  });
})();
