// The computer, restore, enrolment and users pages: small forms over the
// JSON API (docs/api.md). No build step, no library.
"use strict";
(function () {
  function $(id) { return document.getElementById(id); }
  function fmtBytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  function fmtTime(s) { return s ? s.replace("T", " ").replace(/(\.\d+)?Z$/, " UTC") : ""; }
  async function api(method, path, body, csrf) {
    const opts = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    if (csrf) opts.headers["X-CSRF-Token"] = csrf;
    const res = await fetch(path, opts);
    if (res.status === 401) { location.href = "/login"; throw new Error("signed out"); }
    const out = await res.json().catch(function () { return {}; });
    if (!res.ok) throw new Error(out.message || ("HTTP " + res.status));
    return out;
  }
  for (const td of document.querySelectorAll("td[data-bytes]")) td.textContent = fmtBytes(Number(td.dataset.bytes));

  // The computer page: its technical contact.
  const cf = $("contact-form");
  if (cf) cf.addEventListener("submit", async function (ev) {
    ev.preventDefault();
    const id = $("computer").dataset.computer;
    try {
      const out = await api("POST", "/api/v1/computers/" + encodeURIComponent(id) + "/contact", { contact: $("contact").value.trim() }, cf.dataset.csrf);
      $("contact-status").textContent = out.contact ? "saved" : "cleared";
    } catch (e) { $("contact-status").textContent = e.message; }
  });

  // The restore page: browse a version, select, restore, follow.
  const rs = $("restore");
  if (rs) {
    const computer = rs.dataset.computer, csrf = rs.dataset.csrf;
    let dir = "/", offset = 0, selected = new Set(), last = null;
    const limit = 100;
    function point() {
      const v = $("version").value;
      if (v === "at") {
        const t = $("at").value;
        return t ? { at: new Date(t).toISOString().replace(/\.\d+Z$/, "Z") } : {};
      }
      return { version: v };
    }
    function filterVersions() {
      const cfg = $("config").value;
      for (const o of $("version").options) if (o.dataset.config) o.hidden = o.dataset.config !== cfg;
    }
    function crumbs() {
      const nav = $("crumbs");
      nav.replaceChildren();
      const parts = dir.split("/").filter(Boolean);
      const add = function (label, p) {
        const a = document.createElement("a");
        a.href = "#"; a.textContent = label; a.dataset.dir = p;
        a.addEventListener("click", function (ev) { ev.preventDefault(); go(p); });
        nav.appendChild(a);
        nav.appendChild(document.createTextNode(" / "));
      };
      add("/", "/");
      let p = "";
      for (const c of parts) { p += "/" + c; add(c, p); }
    }
    function go(d) { dir = d; offset = 0; $("search").value = ""; load(); }
    function showSelected() {
      $("selected").textContent = selected.size ? Array.from(selected).join(", ") : "nothing (select files or directories above)";
    }
    async function load() {
      crumbs();
      const q = new URLSearchParams(point());
      q.set("dir", dir); q.set("offset", offset); q.set("limit", limit);
      const s = $("search").value.trim();
      if (s) q.set("q", s);
      const body = $("files").tBodies[0];
      let out;
      try {
        out = await api("GET", "/api/v1/computers/" + encodeURIComponent(computer) + "/configs/" + encodeURIComponent($("config").value) + "/files?" + q);
      } catch (e) {
        body.replaceChildren();
        const tr = body.insertRow(); const td = tr.insertCell(); td.colSpan = 6; td.className = "error"; td.textContent = e.message;
        $("point").textContent = "";
        return;
      }
      last = out;
      $("point").textContent = "Version " + out.seq + (out.journal_records ? " with " + out.journal_records + " journal records" : "") +
        ", covering " + fmtTime(out.covers) + (s ? " · " + out.total + " found" + (out.truncated ? " (more: narrow the search)" : "") : "");
      body.replaceChildren();
      for (const e of out.entries) {
        const tr = body.insertRow();
        tr.dataset.path = e.path;
        const cb = document.createElement("input");
        cb.type = "checkbox"; cb.checked = selected.has(e.path); cb.setAttribute("aria-label", "select " + e.path);
        cb.addEventListener("change", function () { if (cb.checked) selected.add(e.path); else selected.delete(e.path); showSelected(); });
        tr.insertCell().appendChild(cb);
        const name = tr.insertCell();
        if (e.type === "dir") {
          const a = document.createElement("a");
          a.href = "#"; a.textContent = s ? e.path : e.name + "/";
          a.addEventListener("click", function (ev) { ev.preventDefault(); go(e.path); });
          name.appendChild(a);
        } else {
          name.textContent = s ? e.path : e.name;
          if (e.target) name.textContent += " → " + e.target;
        }
        if (e.status) { const sm = document.createElement("small"); sm.className = "error"; sm.textContent = " " + e.status + (e.error ? ": " + e.error : ""); name.appendChild(sm); }
        tr.insertCell().textContent = e.type;
        tr.insertCell().textContent = e.type === "file" ? fmtBytes(e.size || 0) : "";
        tr.insertCell().textContent = fmtTime(e.mtime);
        tr.insertCell().textContent = (e.user || "") + (e.group ? ":" + e.group : "");
      }
      if (!out.entries.length) { const tr = body.insertRow(); const td = tr.insertCell(); td.colSpan = 6; td.textContent = s ? "Nothing matches." : "Empty directory."; }
      $("prev").hidden = s || offset === 0;
      $("next").hidden = s || offset + out.entries.length >= out.total;
      $("page").textContent = s ? "" : (out.total ? (offset + 1) + "–" + (offset + out.entries.length) + " of " + out.total : "");
    }
    $("config").addEventListener("change", function () { filterVersions(); $("version").value = "latest"; selected.clear(); showSelected(); go("/"); });
    $("version").addEventListener("change", function () { $("at").hidden = $("version").value !== "at"; if ($("version").value !== "at") load(); });
    $("at").addEventListener("change", load);
    let timer = null;
    $("search").addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(function () { offset = 0; load(); }, 300); });
    $("prev").addEventListener("click", function () { offset = Math.max(0, offset - limit); load(); });
    $("next").addEventListener("click", function () { offset += limit; load(); });

    async function follow(target, id) {
      const path = "/api/v1/computers/" + encodeURIComponent(target) + "/commands/" + encodeURIComponent(id);
      for (;;) {
        let c;
        try { c = await api("GET", path + "?wait=20"); } catch (e) { $("restore-detail").textContent = e.message; return; }
        const st = $("restore-state");
        st.textContent = c.state; st.dataset.state = c.state;
        const pr = c.progress, res = c.result;
        if (res) {
          $("restore-detail").textContent = (res.error ? res.error + " · " : "") + (res.files || 0) + " files, " + fmtBytes(res.bytes || 0) + " restored" +
            (res.kept ? " (" + res.kept + " of them already as in the version: checked, not downloaded)" : "") +
            (res.reused ? ", " + fmtBytes(res.reused) + " taken from the files there" : "") +
            (res.failed_count ? ", " + res.failed_count + " failed" : "");
          $("restore-bar").value = 100;
          const fb = $("restore-failures");
          fb.tBodies[0].replaceChildren();
          for (const f of res.failures || []) { const tr = fb.tBodies[0].insertRow(); tr.insertCell().textContent = f.path; tr.insertCell().textContent = f.error; }
          fb.hidden = !(res.failures && res.failures.length);
        } else if (pr) {
          $("restore-detail").textContent = pr.files + " files, " + fmtBytes(pr.bytes) + (pr.total_bytes ? " of " + fmtBytes(pr.total_bytes) : "") +
            (pr.rate ? " at " + fmtBytes(pr.rate) + "/s" : "") + (pr.failed ? ", " + pr.failed + " failed" : "") + (pr.message ? " · " + pr.message : "");
          if (pr.total_bytes) $("restore-bar").value = Math.min(100, 100 * pr.bytes / pr.total_bytes);
        } else {
          $("restore-detail").textContent = c.state === "queued" ? "waiting for the agent of " + target + " to take it" : "";
        }
        if (c.state !== "queued" && c.state !== "running") return;
      }
    }
    $("restore-form").addEventListener("submit", async function (ev) {
      ev.preventDefault();
      if (!selected.size && !confirm("Nothing selected: restore the whole version?")) return;
      const req = Object.assign({ computer: computer, config: $("config").value, paths: Array.from(selected),
        target: $("target").value, to: $("to").value.trim(), existing: $("existing").value }, point());
      $("restore-progress").hidden = false;
      $("restore-state").textContent = "sending"; $("restore-detail").textContent = "";
      $("restore-failures").hidden = true;
      $("restore-bar").value = 0;
      try {
        const c = await api("POST", "/api/v1/restores", req, csrf);
        $("restore-state").textContent = c.state;
        follow(c.computer, c.id);
      } catch (e) { $("restore-state").textContent = "refused"; $("restore-detail").textContent = e.message; }
    });
    const v0 = new URLSearchParams(location.search).get("version");
    filterVersions();
    if (v0) $("version").value = v0;
    showSelected();
    load();
  }
})();

// The enrolment page: a token and the command to paste.
(function () {
  const f = document.getElementById("token-form");
  if (!f) return;
  const csrf = document.getElementById("tokens").dataset.csrf;
  f.addEventListener("submit", async function (ev) {
    ev.preventDefault();
    const co = document.getElementById("token-company");
    const err = document.getElementById("token-error");
    err.hidden = true;
    try {
      const res = await fetch("/api/v1/tokens", { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ company: co ? co.value : "", ttl: document.getElementById("token-ttl").value }) });
      const out = await res.json();
      if (!res.ok) throw new Error(out.message || ("HTTP " + res.status));
      document.getElementById("token").textContent = out.token;
      document.getElementById("install").textContent = out.install;
      document.getElementById("token-expires").textContent = out.expires.replace("T", " ").replace(/(\.\d+)?Z$/, " UTC");
      document.getElementById("token-out").hidden = false;
    } catch (e) { err.textContent = e.message; err.hidden = false; }
  });
  document.querySelectorAll("button.token-revoke").forEach(function (b) {
    b.addEventListener("click", async function () {
      const row = b.closest("tr");
      const err = document.getElementById("token-error");
      err.hidden = true;
      try {
        const res = await fetch("/api/v1/tokens/" + encodeURIComponent(row.dataset.token), { method: "DELETE", credentials: "same-origin",
          headers: { "X-CSRF-Token": csrf } });
        const out = await res.json().catch(function () { return {}; });
        if (!res.ok) throw new Error(out.message || ("HTTP " + res.status));
        row.remove();
      } catch (e) { err.textContent = e.message; err.hidden = false; }
    });
  });
})();

// The users page: invite, change capabilities and assignments, reset, delete.
(function () {
  const f = document.getElementById("user-form");
  if (!f) return;
  const csrf = document.getElementById("users").dataset.csrf;
  const out = document.getElementById("user-out");
  function $(id) { return document.getElementById(id); }
  async function call(method, path, body) {
    const res = await fetch(path, { method: method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: body === undefined ? undefined : JSON.stringify(body) });
    const o = await res.json().catch(function () { return {}; });
    if (!res.ok) throw new Error(o.message || ("HTTP " + res.status));
    return o;
  }
  function form() {
    const caps = Array.from(f.querySelectorAll("input[name=cap]:checked")).map(function (c) { return c.value; });
    const computers = Array.from($("user-computers").selectedOptions).map(function (o) { return o.value; });
    return { caps: caps, limited: $("user-limited").checked, computers: computers };
  }
  function said(text) { out.textContent = text; }
  f.addEventListener("submit", async function (ev) {
    ev.preventDefault();
    const req = Object.assign({ name: $("user-name").value.trim() }, form());
    if ($("user-kind")) { req.kind = $("user-kind").value; req.company = $("user-company").value.trim(); }
    try {
      const u = await call("POST", "/api/v1/users", req);
      said("User " + u.name + " invited. One-time password (shown once): " + u.password);
    } catch (e) { said(e.message); }
  });
  $("user-caps").addEventListener("click", async function () {
    const name = $("user-name").value.trim();
    try {
      const u = await call("POST", "/api/v1/users/" + encodeURIComponent(name) + "/caps", form());
      said("User " + u.name + " now holds " + u.caps.join(", ") + (u.limited ? " over " + (u.computers || []).join(", ") : " over every computer") + ".");
    } catch (e) { said(e.message); }
  });
  for (const tr of document.querySelectorAll("#user-list tbody tr")) {
    const name = tr.dataset.user;
    tr.querySelector(".edit-user").addEventListener("click", function (ev) {
      ev.preventDefault();
      $("user-name").value = name;
      const caps = tr.dataset.caps.split(",");
      for (const c of f.querySelectorAll("input[name=cap]")) c.checked = caps.includes(c.value);
      $("user-limited").checked = tr.dataset.limited === "true";
      const cs = tr.dataset.computers.split(",");
      for (const o of $("user-computers").options) o.selected = cs.includes(o.value);
    });
    tr.querySelector(".reset-user").addEventListener("click", async function () {
      if (!confirm("Reset the password of " + name + " and sign it out everywhere?")) return;
      try {
        const u = await call("POST", "/api/v1/users/" + encodeURIComponent(name) + "/password", {});
        said("New one-time password of " + name + " (shown once): " + u.password);
      } catch (e) { said(e.message); }
    });
    tr.querySelector(".delete-user").addEventListener("click", async function () {
      if (!confirm("Delete user " + name + "?")) return;
      try { await call("DELETE", "/api/v1/users/" + encodeURIComponent(name)); tr.remove(); said("User " + name + " deleted."); } catch (e) { said(e.message); }
    });
  }
})();
