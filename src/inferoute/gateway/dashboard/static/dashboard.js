// The dashboard: polls /dashboard/state every second and draws the tables and two SVG charts;
// the chat box streams a reply from the gateway's /v1/chat/completions (through
// /dashboard/chat, which adds the signed-in session's key when tenants are on). No libraries;
// no key in the page: the session is an HttpOnly cookie.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
};
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const num = (x, d = 2) => (x === null || x === undefined ? "–" : x.toFixed(d));

function setStatus(state, text) {
  const s = $("#status");
  s.dataset.state = state;
  s.textContent = text;
}

function drawPools(pools) {
  const root = $("#pools");
  root.replaceChildren();
  for (const pool of pools) {
    const head = el("div", { class: "pool-head" }, el("b", {}, pool.name));
    head.append(el("span", {}, "ready ", el("span", { "data-pool": pool.name, "data-field": "ready" }, String(pool.ready))));
    head.append(el("span", {}, "mean KV ", pct(pool.average_kv)));
    head.append(el("span", {}, "mean queue ", num(pool.average_queue, 1)));
    const adm = pool.admission;
    if (adm) {
      head.append(el("span", {}, "waiting in gateway ", el("span", { "data-pool": pool.name, "data-field": "queued" }, String(adm.queued))));
      head.append(el("span", {}, "slots kept for top priority ", el("span", { "data-pool": pool.name, "data-field": "reserved" }, String(adm.reserved_slots))));
      if (adm.top_priority_requests) {
        head.append(el("span", { class: "estimate" }, `(top priority without a free slot: ${adm.top_priority_without_free_slot} of ${adm.top_priority_requests})`));
      }
    }
    const fit = pool.kv_fit;
    if (fit) {
      const share = fit.recompute_share === null ? "not measured yet" : `prefixes recomputed ${pct(fit.recompute_share)}`;
      head.append(el("span", {}, "KV-fit release ",
        el("span", { "data-pool": pool.name, "data-field": "kv_fit_holding", "data-value": String(fit.holding) }, fit.holding ? "holding" : "not holding"),
        el("span", { class: "estimate", "data-field": "recompute_share", "data-value": String(fit.recompute_share) }, ` (${share})`)));
    }
    if (pool.desired_replicas !== null) {
      head.append(el("span", {}, "desired replicas ", el("span", { "data-pool": pool.name, "data-field": "desired" }, String(pool.desired_replicas))));
      const e = pool.estimate;
      if (e && e.measured) {
        head.append(el("span", { class: "estimate" }, `(${num(e.arrival_rate, 1)} req/s, unqueued TTFT ${num(e.unqueued_ttft, 2)} s, work ${num(e.work, 2)} s, ρ ≤ ${num(e.rho_max, 2)}, TTFT bound ${num(e.ttft_replicas, 1)}, KV bound ${num(e.kv_replicas, 1)})`));
      }
    }
    const table = el("table", { class: "replicas", "data-pool": pool.name });
    table.append(el("thead", {}, el("tr", {}, ...["replica", "health", "queue", "running", "in flight", "KV", "prefix hits", "scraped"].map((h) => el("th", {}, h)))));
    const body = el("tbody");
    for (const r of pool.replicas) {
      const cell = (field, text) => el("td", { "data-field": field }, text);
      const kv = el("td", { "data-field": "kv", "data-value": String(r.kv) },
        el("span", { class: "bar" }, el("i", { style: `width:${Math.min(100, 100 * r.kv)}%` })), pct(r.kv));
      const row = el("tr", { "data-endpoint": r.endpoint },
        el("td", {}, r.endpoint),
        el("td", { "data-field": "health", class: "health-" + r.health }, r.health),
        cell("waiting", String(r.waiting)), cell("running", String(r.running)),
        cell("in_flight", String(r.in_flight)), kv,
        el("td", { "data-field": "prefix_hit_rate", "data-value": String(r.prefix_hit_rate) }, pct(r.prefix_hit_rate)),
        cell("scraped", r.scraped_ago === null ? "never" : num(r.scraped_ago, 2) + " s ago"));
      body.append(row);
    }
    table.append(body);
    root.append(el("div", { class: "pool" }, head, table));
  }
}

function drawRecent(recent) {
  const body = $("#recent tbody");
  body.replaceChildren();
  for (const d of recent) {
    const scorers = Object.entries(d.scores).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(" · ");
    body.append(el("tr", { "data-seq": String(d.seq) },
      el("td", {}, num(d.age, 1) + " s"), el("td", {}, d.model),
      el("td", { "data-field": "endpoint" }, d.endpoint + (d.fallback ? " (fallback)" : "")),
      el("td", {}, d.total === null ? "–" : d.total.toFixed(2)),
      el("td", { class: "scorers", "data-field": "scores" }, scorers || "(no scorers)")));
  }
}

function drawChart(svg, a, b, digits) {
  const W = 480, H = 140, L = 34, B = 16, T = 6;
  const all = a.concat(b).filter((x) => x !== null);
  const max = Math.max(1e-9, ...all) * 1.1;
  const x = (i) => L + ((W - L - 4) * i) / Math.max(1, a.length - 1);
  const y = (v) => H - B - ((H - B - T) * v) / max;
  const line = (vals, cls) => {
    const pts = vals.map((v, i) => (v === null ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean);
    return pts.length ? `<polyline class="${cls}" points="${pts.join(" ")}"/>` : "";
  };
  svg.innerHTML =
    `<line class="axis" x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}"/>` +
    `<line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>` +
    `<text x="2" y="${T + 8}">${max.toFixed(digits)}</text><text x="2" y="${H - B}">0</text>` +
    `<text x="${L}" y="${H - 3}">−5 min</text><text x="${W - 24}" y="${H - 3}">now</text>` +
    line(a, "a") + line(b, "b");
}

async function poll() {
  try {
    const resp = await fetch("/dashboard/state", { cache: "no-store" });
    if (resp.status === 401) {  // the session ended: back to the sign-in form
      location.reload();
      return;
    }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const state = await resp.json();
    drawPools(state.pools);
    drawRecent(state.recent);
    const s = state.series;
    drawChart($("#chart-throughput"), s.requests_per_s, s.output_tokens_per_s, 1);
    drawChart($("#chart-ttft"), s.ttft_p50, s.ttft_p90, 2);
    const select = $("#chat-model");
    if (!select.options.length) for (const m of state.models) select.append(el("option", {}, m));
    if (state.signed_in_as !== null) {
      $("#signed-in-as").textContent = state.signed_in_as;
      $("#logout-form").hidden = false;
    }
    setStatus("ok", "live · " + new Date(state.time * 1000).toLocaleTimeString());
    document.body.dataset.updated = String(state.time);
  } catch (err) {
    setStatus("error", "no data: " + err.message);
  }
}

const conversation = [];
$("#chat-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  const log = $("#chat-log");
  log.append(el("div", { class: "user" }, "you: " + text));
  const reply = el("div", { class: "assistant", "data-chunks": "0", "data-done": "false" });
  log.append(reply);
  conversation.push({ role: "user", content: text });
  $("#chat-send").disabled = true;
  let answer = "";
  try {
    const resp = await fetch("/dashboard/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("#chat-model").value, messages: conversation, stream: true, max_tokens: 64 }),
    });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || "HTTP " + resp.status);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of frame.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const delta = JSON.parse(data).choices?.[0]?.delta?.content;
          if (delta) {
            answer += delta;
            reply.textContent = answer;
            reply.dataset.chunks = String(Number(reply.dataset.chunks) + 1);
            log.scrollTop = log.scrollHeight;
          }
        }
      }
    }
    conversation.push({ role: "assistant", content: answer });
  } catch (err) {
    reply.classList.add("error");
    reply.textContent = "error: " + err.message;
  } finally {
    reply.dataset.done = "true";
    $("#chat-send").disabled = false;
  }
});

poll();
setInterval(poll, 1000);
