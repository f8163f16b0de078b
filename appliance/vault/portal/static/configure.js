// The configuration wizard: browse the computer's live files through its
// agent (POST .../browse), choose what, when and how fast, save through
// the JSON API (docs/api.md); back up now and compare, followed to their
// end. No build step, no library.
"use strict";
(function () {
  const root = document.getElementById("configure");
  if (!root) return;
  const $ = function (id) { return document.getElementById(id); };
  const computer = root.dataset.computer, csrf = root.dataset.csrf;
  const base = "/api/v1/computers/" + encodeURIComponent(computer) + "/";
  const selected = new Set();
  let configs = [];

  async function api(method, path, body) {
    const opts = { method: method, credentials: "same-origin", headers: { "Accept": "application/json", "X-CSRF-Token": csrf } };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const res = await fetch(base + path, opts);
    if (res.status === 401) { location.href = "/login"; throw new Error("signed out"); }
    const out = await res.json().catch(function () { return {}; });
    if (!res.ok) throw new Error(out.message || ("HTTP " + res.status));
    return out;
  }
  function fmtBytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  // follow polls a command until it has finished, showing its progress.
  async function follow(cmd, show) {
    while (cmd.state === "queued" || cmd.state === "running") {
      show(cmd);
      cmd = await api("GET", "commands/" + encodeURIComponent(cmd.id) + "?wait=10");
    }
    return cmd;
  }
  function join(dir, name) { return dir === "/" ? "/" + name : dir + "/" + name; }

  // The tree: one level per browse command.
  function renderPaths() {
    $("paths").textContent = selected.size ? Array.from(selected).sort().join(", ") : "nothing yet";
  }
  function entryItem(path, label, e) {
    const li = document.createElement("li");
    li.dataset.path = path;
    const box = document.createElement("input");
    box.type = "checkbox"; box.checked = selected.has(path); box.setAttribute("aria-label", "back up " + path);
    box.addEventListener("change", function () { if (box.checked) selected.add(path); else selected.delete(path); renderPaths(); });
    li.appendChild(box);
    const name = document.createElement(e.type === "dir" ? "button" : "span");
    name.textContent = label + (e.type === "dir" ? "/" : "");
    name.className = e.type === "dir" ? "link dir" : e.type;
    li.appendChild(name);
    const info = document.createElement("small");
    info.textContent = (e.mount ? " " + e.mount : "") + (e.type === "file" ? " " + fmtBytes(e.size) : "") +
      (e.mtime ? " · " + e.mtime.replace("T", " ").replace(/(\.\d+)?Z$/, " UTC") : "");
    li.appendChild(info);
    if (e.type === "dir") {
      name.type = "button";
      name.addEventListener("click", function () { toggle(li, path); });
    }
    return li;
  }
  async function list(path) {
    let cmd = await api("POST", "browse", { path: path });
    cmd = await follow(cmd, function () { $("cmd-status").textContent = "asking the computer…"; });
    if (cmd.state !== "done") throw new Error((cmd.result && cmd.result.error) || cmd.state);
    return cmd.result.browse;
  }
  async function toggle(li, path) {
    const open = li.querySelector(":scope > ul");
    if (open) { open.remove(); return; }
    try {
      const b = await list(path);
      const ul = document.createElement("ul");
      for (const e of b.entries) ul.appendChild(entryItem(join(path, e.name), e.name, e));
      if (b.truncated) { const more = document.createElement("li"); more.textContent = "… more entries than shown"; ul.appendChild(more); }
      li.appendChild(ul);
      $("cmd-status").textContent = "";
    } catch (err) { $("cmd-status").textContent = "Cannot browse " + path + ": " + err.message; }
  }
  async function loadRoots() {
    try {
      const b = await list("");
      const tree = $("tree");
      tree.replaceChildren();
      for (const e of b.entries) tree.appendChild(entryItem(e.name, e.name === "/" ? "/ (the whole system)" : e.name, e));
      $("cmd-status").textContent = "";
    } catch (err) { $("cmd-status").textContent = "Cannot browse the computer: " + err.message + " (is its agent running?)"; }
  }

  function kind() { return document.querySelector("input[name=kind]:checked").value; }
  function showKind() {
    $("what-files").hidden = kind() !== "files";
    $("what-database").hidden = kind() !== "database";
  }
  document.querySelectorAll("input[name=kind]").forEach(function (r) { r.addEventListener("change", showKind); });
  function lines(id) { return $(id).value.split("\n").map(function (s) { return s.trim(); }).filter(Boolean); }

  $("wizard").addEventListener("submit", async function (ev) {
    ev.preventDefault();
    const name = $("cfg-name").value.trim();
    const cfg = { kind: kind(), mode: document.querySelector("input[name=mode]:checked").value,
      schedule: $("schedule").value.trim() || "24x7", interval: $("interval").value.trim() };
    if (cfg.kind === "files") {
      cfg.paths = Array.from(selected).sort(); cfg.exclude = lines("exclude"); cfg.include = lines("include");
    }
    if (cfg.kind === "database") cfg.command = ["/bin/sh", "-c", $("command").value];
    try {
      const out = await api("PUT", "configs/" + encodeURIComponent(name), cfg);
      const bw = $("bandwidth").value.trim();
      if (bw !== $("bandwidth").defaultValue) await api("PUT", "bandwidth", { bandwidth: bw === "unlimited" ? "" : bw });
      $("saved").textContent = "Saved " + out.name + " (revision " + out.revision + "); the computer takes it now.";
      setTimeout(function () { location.reload(); }, 800);
    } catch (err) { $("saved").textContent = "Not saved: " + err.message; }
  });

  // Edit: fill the form with a configuration.
  document.querySelectorAll("button.edit").forEach(function (b) {
    b.addEventListener("click", function () {
      const c = configs.find(function (x) { return x.name === b.dataset.config; });
      if (!c) return;
      $("wizard-title").textContent = "Change " + c.name;
      $("cfg-name").value = c.name;
      $("kind-" + c.kind).checked = true; showKind();
      selected.clear(); (c.paths || []).forEach(function (p) { selected.add(p); }); renderPaths();
      $("exclude").value = (c.exclude || []).join("\n"); $("include").value = (c.include || []).join("\n");
      $("mode-" + (c.mode || "scheduled")).checked = true;
      $("schedule").value = c.schedule || "24x7"; $("interval").value = c.interval || "";
      if (c.command) $("command").value = c.command.length === 3 && c.command[0] === "/bin/sh" ? c.command[2] : c.command.join(" ");
      $("cfg-name").focus();
    });
  });

  // Back up now, followed to its end.
  document.querySelectorAll("button.backup-now").forEach(function (b) {
    b.addEventListener("click", async function () {
      const st = $("cmd-status");
      try {
        b.disabled = true;
        let cmd = await api("POST", "backup-now", { config: b.dataset.config });
        cmd = await follow(cmd, function (c) {
          const p = c.progress;
          st.textContent = b.dataset.config + ": " + c.state + (p ? " · " + p.files + " files, " + fmtBytes(p.bytes) +
            (p.rate ? " at " + fmtBytes(p.rate) + "/s" : "") + (p.eta_seconds ? ", about " + p.eta_seconds + " s left" : "") : "");
        });
        const r = cmd.result || {};
        st.textContent = cmd.state === "done" && r.backup ? b.dataset.config + ": version " + r.backup.seq + " done, " + r.files + " files, " +
          fmtBytes(r.backup.bytes_sent) + " sent" + (r.failed_count ? "; " + r.failed_count + " files could not be read" : "") :
          b.dataset.config + ": " + cmd.state + (r.error ? ": " + r.error : "");
        st.dataset.state = cmd.state;
      } catch (err) { st.textContent = "Back up now failed: " + err.message; }
      b.disabled = false;
    });
  });

  // Compare the newest version with the live files.
  document.querySelectorAll("button.compare").forEach(function (b) {
    b.addEventListener("click", async function () {
      const st = $("cmd-status");
      try {
        let cmd = await api("POST", "compare", { config: b.dataset.config, version: 0 });
        cmd = await follow(cmd, function (c) { st.textContent = "comparing " + b.dataset.config + ": " + c.state; });
        if (cmd.state !== "done") throw new Error((cmd.result && cmd.result.error) || cmd.state);
        const c = cmd.result.compare;
        $("compare-version").textContent = c.config + "@" + c.version;
        [["added", 0], ["changed", 1], ["removed", 2]].forEach(function (k) {
          const ul = $(k[0]);
          ul.replaceChildren();
          for (const p of c[k[0]]) { const li = document.createElement("li"); li.textContent = p; ul.appendChild(li); }
          $(k[0] + "-count").textContent = c.counts[k[1]];
        });
        $("compare-result").hidden = false;
        st.textContent = c.truncated ? "Compared (more changes than shown)." : "Compared.";
      } catch (err) { st.textContent = "Compare failed: " + err.message; }
    });
  });

  renderPaths();
  showKind();
  api("GET", "configs").then(function (c) { configs = c.configs || []; }).catch(function () {});
  loadRoots();
})();
