// The dashboard: polls dashboard.json (rates and percentiles computed by the gateway over its
// last ~10 s) every second and redraws. Every value is written with textContent, never as
// HTML. With admin.token set, the JSON needs the token: it is asked for once, kept in
// sessionStorage (or taken from the URL fragment #token=…, which no server sees) and sent as
// a bearer token.
"use strict";

const POLL_MS = 1000;
const rates = [];

function token() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("mcas-admin-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("mcas-admin-token");
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function num(v, digits) {
  if (v === null || v === undefined) return "–";
  if (v >= 1000) return Math.round(v).toLocaleString("en");
  return v.toFixed(digits === undefined ? (v >= 10 ? 0 : 1) : digits);
}

function ms(p) {
  if (!p || p.p50 === null) return "–";
  return [p.p50, p.p90, p.p99].map((v) => (v >= 1000 ? (v / 1000).toFixed(2) + " s" : num(v) + " ms")).join(" / ");
}

function set(id, text) {
  document.getElementById(id).textContent = text;
}

function spark(rps) {
  rates.push(rps);
  if (rates.length > 60) rates.shift();
  const max = Math.max(1e-9, ...rates);
  // Spread over the full width however many points there are yet.
  const step = rates.length > 1 ? 60 / (rates.length - 1) : 0;
  const pts = rates.map((v, i) => `${(i * step).toFixed(2)},${(20 - (v / max) * 19).toFixed(2)}`);
  document.querySelector("#spark polyline").setAttribute("points", pts.join(" "));
}

function renderCards(d) {
  const rps = d.requests_per_second;
  const rpsEl = document.getElementById("rps");
  rpsEl.textContent = rps === undefined ? "–" : num(rps);
  rpsEl.dataset.value = rps === undefined ? "" : String(rps);
  if (rps !== undefined) spark(rps);
  const ratio = d.error_ratio;
  const errors = document.getElementById("errors");
  errors.textContent = ratio === undefined ? "–" : (ratio * 100).toFixed(1) + " %";
  errors.className = "big " + (ratio > 0.01 ? "bad" : "ok");
  const classes = d.requests_per_second_by_class || {};
  set("classes", Object.keys(classes).sort().map((c) => `${c} ${num(classes[c])}/s`).join(" · "));
  set("latency", ms(d.latency_ms));
  set("ttft", ms(d.ttft_ms));
  set("tokens", d.tokens_in_per_second === undefined ? "–" : `${num(d.tokens_in_per_second)} / ${num(d.tokens_out_per_second)}`);
  set("open", `${num(d.inflight, 0)} · ${num(d.open_streams, 0)} · ${num(d.open_tunnels, 0)}`);
  const queues = d.queues || {};
  const card = document.getElementById("queues-card");
  card.hidden = Object.keys(queues).length === 0;
  const box = document.getElementById("queues");
  box.replaceChildren(...Object.keys(queues).sort().map((q) => el("div", `${q.replace(/^mcas_/, "")}: ${num(queues[q], 0)}`)));
}

function cell(row, text, cls) {
  row.appendChild(el("td", text, cls));
}

function renderProvider(p) {
  const box = el("div", null, "provider");
  const title = el("h3", p.name + " ");
  title.appendChild(el("span", p.healthy ? "healthy" : "no usable backend", p.healthy ? "ok" : "bad"));
  title.appendChild(el("span", ` · ${p.balance}`, "muted"));
  box.appendChild(title);
  const kv = p.backends.some((b) => b.kv_cache !== undefined && b.kv_cache !== null);
  const table = el("table");
  const head = el("tr");
  for (const h of ["backend", "health", "circuit", "in flight", ...(kv ? ["KV cache"] : [])]) head.appendChild(el("th", h));
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  for (const b of p.backends) {
    const row = el("tr", null, "backend");
    row.dataset.address = b.address;
    cell(row, b.address);
    cell(row, b.in_rotation ? "up" : b.healthy ? "out of rotation" : "down", b.in_rotation ? "ok" : "bad");
    cell(row, b.circuit.replace("_", "-"), b.circuit === "closed" ? "ok" : b.circuit === "open" ? "bad" : "warn");
    cell(row, String(b.inflight));
    if (kv) cell(row, b.kv_cache === undefined || b.kv_cache === null ? "–" : (b.kv_cache * 100).toFixed(0) + " %");
    body.appendChild(row);
  }
  const scroll = el("div", null, "scroll");
  scroll.appendChild(table);
  box.appendChild(scroll);
  return box;
}

function renderKeys(keys) {
  const body = document.querySelector("#keys tbody");
  body.replaceChildren(
    ...(keys || []).map((k) => {
      const row = el("tr");
      cell(row, k.name);
      cell(row, num(k.requests_per_second));
      cell(row, num(k.tokens_per_second));
      return row;
    }),
  );
}

function render(d) {
  renderCards(d);
  document.getElementById("providers").replaceChildren(...(d.providers || []).map(renderProvider));
  renderKeys(d.top_keys);
  const win = d.window_seconds === undefined ? "" : ` · rates over ${num(d.window_seconds, 1)} s`;
  set("status", `updated ${new Date().toLocaleTimeString()}${win}`);
}

async function poll() {
  const t = token();
  try {
    const r = await fetch("dashboard.json", { headers: t ? { authorization: "Bearer " + t } : {}, cache: "no-store" });
    if (r.status === 401) {
      sessionStorage.removeItem("mcas-admin-token");
      document.getElementById("login").hidden = false;
      set("status", "admin.token needed");
      return;
    }
    document.getElementById("login").hidden = true;
    render(await r.json());
  } catch (e) {
    set("status", "gateway unreachable, retrying");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("mcas-admin-token", document.getElementById("token").value);
  document.getElementById("login").hidden = true;
});

poll();
