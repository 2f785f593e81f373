// The CoE dashboard: polls /ui/api/summary and /ui/api/recent every second; no framework, no build.
"use strict";

const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, make) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    make(tr, r);
    body.appendChild(tr);
  }
}

function counts(obj) {
  const keys = Object.keys(obj || {});
  return keys.length ? keys.map((k) => `${k}: ${obj[k]}`).join(", ") : "none";
}

async function get(path) {
  const resp = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

function showSummary(s) {
  $("total").textContent = s.requests.total;
  $("rps").textContent = s.requests.per_second.toFixed(2);
  $("failed").textContent = s.requests.failed;
  $("fallbacks").textContent = s.fallbacks;
  $("cache").textContent = counts(s.cache);
  $("signals").textContent = counts(s.signals);
  fill("experts", s.experts, (tr, e) => {
    tr.dataset.expert = e.name;
    cell(tr, e.name);
    const st = cell(tr, "");
    const badge = document.createElement("span");
    badge.className = `state state-${e.state}`;
    badge.textContent = e.state;
    st.appendChild(badge);
    cell(tr, `${e.load}/${e.concurrency}`);
    cell(tr, e.queue);
    cell(tr, e.answered);
    cell(tr, `${(100 * e.error_rate).toFixed(1)}% (${e.errors}/${e.attempts})`);
    cell(tr, e.detail || "");
  });
  fill("latency", Object.entries(s.latency_ms), (tr, [stage, v]) => {
    cell(tr, stage);
    cell(tr, v.p50_ms);
    cell(tr, v.p95_ms);
    cell(tr, v.count);
  });
  const cats = Object.entries(s.categories);
  const most = Math.max(1, ...cats.map(([, n]) => n));
  fill("categories", cats, (tr, [name, n]) => {
    cell(tr, name);
    cell(tr, n);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * n) / most}%`;
    cell(tr, "").appendChild(bar);
  });
  const fb = $("feedback");
  fb.replaceChildren();
  if (!s.feedback.store) {
    fb.className = "muted";
    fb.textContent = s.feedback.reason || "no feedback store";
  } else {
    fb.className = "";
    for (const kind of ["experts", "categories"]) {
      const rows = Object.entries(s.feedback[kind]);
      const p = document.createElement("div");
      p.textContent = `${kind}: ` + (rows.length ? rows.map(([k, v]) => `${k} ${v.mean.toFixed(2)} (n=${v.count})`).join(", ") : "no feedback yet");
      fb.appendChild(p);
    }
  }
}

function showRecent(r) {
  fill("recent", r.data, (tr, d) => {
    tr.dataset.id = d.id;
    tr.addEventListener("click", () => openTrace(d.id));
    cell(tr, new Date(d.time * 1000).toLocaleTimeString());
    cell(tr, d.endpoint);
    cell(tr, d.model);
    cell(tr, d.category);
    cell(tr, d.confidence === null ? null : d.confidence.toFixed(3));
    cell(tr, d.expert);
    cell(tr, d.fallback ? "yes" : "");
    cell(tr, d.duration_ms);
    const status = cell(tr, d.code ? `${d.status} ${d.code}` : d.status, d.status >= 400 ? "err" : "");
    if (d.error) status.title = d.error;
  });
}

async function openTrace(id) {
  try {
    const t = await get(`/ui/api/trace/${encodeURIComponent(id)}`);
    $("detail-id").textContent = id;
    $("detail-body").textContent = JSON.stringify(t, null, 2);
    $("detail").hidden = false;
  } catch (err) {
    $("status").textContent = String(err);
  }
}

async function tick() {
  try {
    const [s, r] = await Promise.all([get("/ui/api/summary"), get("/ui/api/recent?limit=50")]);
    showSummary(s);
    showRecent(r);
    $("status").textContent = `up ${Math.round(s.uptime_s)} s · updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $("status").textContent = String(err);
  }
}

$("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
tick();
setInterval(tick, 1000);
