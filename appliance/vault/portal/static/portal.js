// The All Computers page: sort by a column, filter by text and state, and
// refresh from /api/v1/status every 15 seconds. No build step, no library.
"use strict";
(function () {
  const table = document.getElementById("computers");
  if (!table) return;
  const filter = document.getElementById("filter");
  const stateSel = document.getElementById("state");
  const heads = Array.from(table.tHead.rows[0].cells);
  const operator = heads.length > 0 && heads[0].dataset.key === "company";
  let rows = null; // the last /api/v1/status answer; null: the server's rendering
  let sortKey = null, sortDir = 1; // null: the server's order (those needing attention first) until a column is chosen
  const limit = Number(table.dataset.limit) || 500; // rows laid out at once
  let matched = 0;
  const rank = { "error": 0, "offline": 1, "behind schedule": 2, "initial synchronization": 3,
    "testing configuration and initial synchronization": 4, "protected": 5 };

  function fmtTime(s) {
    if (!s) return null;
    return s.replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, " UTC");
  }
  function fmtBytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  function cell(tr, text, cls) {
    const td = tr.insertCell();
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function timeEl(s) {
    if (!s) return document.createTextNode("never");
    const t = document.createElement("time");
    t.dateTime = s; t.textContent = fmtTime(s);
    return t;
  }
  function render() {
    const body = table.tBodies[0];
    if (rows) {
      // Filter and sort the data, then lay out at most `limit` rows.
      const q = filter.value.trim().toLowerCase(), s = stateSel.value;
      const sorted = rows.filter(function (r) {
        if (s && r.state !== s) return false;
        return !q || [r.company, r.computer_name, r.computer, r.config, r.mode, r.state, r.detail, r.bandwidth].join(" ").toLowerCase().includes(q);
      });
      if (sortKey) sorted.sort(function (a, b) {
        const x = a[sortKey] ?? "", y = b[sortKey] ?? "";
        return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
      });
      else sorted.sort(function (a, b) { return (rank[a.state] ?? 9) - (rank[b.state] ?? 9); });
      matched = sorted.length;
      body.replaceChildren();
      for (const r of sorted.slice(0, limit)) {
        const tr = body.insertRow();
        tr.dataset.state = r.state;
        if (operator) cell(tr, r.company);
        const link = document.createElement("a");
        link.href = "/computers/" + encodeURIComponent(r.computer); link.textContent = r.computer_name;
        cell(tr, link).title = r.computer;
        cell(tr, r.config + (r.mode === "continuous" ? " (continuous)" : ""));
        const st = document.createElement("span");
        st.className = "state"; st.dataset.state = r.state; st.textContent = r.state;
        const td = cell(tr, st);
        if (r.detail) { td.appendChild(document.createElement("br")); const s = document.createElement("small"); s.textContent = r.detail; td.appendChild(s); }
        for (const w of r.warnings || []) { td.appendChild(document.createElement("br")); const s = document.createElement("small"); s.className = "warning"; s.textContent = "⚠ " + w; td.appendChild(s); }
        cell(tr, timeEl(r.covers));
        cell(tr, fmtBytes(r.protected_bytes || 0));
        cell(tr, r.next_run ? timeEl(r.next_run) : "—");
        cell(tr, r.bandwidth || "unlimited");
      }
    } else {
      for (const td of body.querySelectorAll("td[data-bytes]")) td.textContent = fmtBytes(Number(td.dataset.bytes));
    }
    applyFilter();
  }
  function applyFilter() {
    if (rows) { // the data is here: filter it, not the rows laid out
      const shown = table.tBodies[0].rows.length;
      document.getElementById("count").textContent = shown + " of " + matched + " shown" + (matched < rows.length ? " (" + rows.length + " in all)" : "");
      return;
    }
    const q = filter.value.trim().toLowerCase(), s = stateSel.value;
    let shown = 0, all = 0;
    for (const tr of table.tBodies[0].rows) {
      if (tr.classList.contains("empty")) continue;
      all++;
      const ok = (!q || tr.textContent.toLowerCase().includes(q)) && (!s || tr.dataset.state === s);
      tr.hidden = !ok;
      if (ok) shown++;
    }
    document.getElementById("count").textContent = shown + " of " + all + " shown";
  }
  async function refresh() {
    try {
      const res = await fetch("/api/v1/status", { headers: { "Accept": "application/json" }, credentials: "same-origin" });
      if (res.status === 401) { location.href = "/login"; return; }
      if (!res.ok) return;
      rows = await res.json();
      render();
      document.getElementById("refreshed").textContent = new Date().toLocaleTimeString();
    } catch (e) { /* the next refresh tries again */ }
  }
  heads.forEach(function (th) {
    th.addEventListener("click", function () {
      const key = th.dataset.key;
      sortDir = key === sortKey ? -sortDir : 1;
      sortKey = key;
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      if (!rows) { refresh(); return; }
      render();
    });
  });
  filter.addEventListener("input", function () { if (rows) render(); else applyFilter(); });
  stateSel.addEventListener("change", function () { if (rows) render(); else applyFilter(); });
  render();
  // The server rendered the rows needing attention first: the whole data
  // (for filtering and sorting every row) is fetched once the page has
  // loaded, so building it does not compete with the first paint.
  if (document.readyState === "complete") setTimeout(refresh, 0);
  else window.addEventListener("load", function () { setTimeout(refresh, 0); });
  setInterval(refresh, 15000);
})();
