// The rtml dashboard: every chart is drawn here from the JSON endpoints of the API, with the
// locally served uPlot, and refreshed every REFRESH_MS. `window.rtmlDashboard.points[chart]`
// holds how many data points each chart drew last time (the browser test reads it).
"use strict";

const REFRESH_MS = 15000;
const API = "api/";
const C = { blue: "#4ea1ff", orange: "#f5a524", green: "#3fb97a", red: "#ef5b5b", violet: "#a78bfa", muted: "#7d8b99", grid: "#26313d" };
const state = { charts: {}, points: {}, refreshes: 0, errors: [] };
window.rtmlDashboard = state;

async function getJSON(path) {
  const response = await fetch(API + path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function axis(label, side, extra) {
  return Object.assign({
    label, side, stroke: C.muted, labelSize: 16, size: 56,
    grid: { stroke: C.grid, width: 1 }, ticks: { stroke: C.grid, width: 1 },
  }, extra || {});
}

function countDrawn(name) {
  // Points of every visible series inside the x range that was drawn.
  return (u) => {
    const [i0, i1] = u.series[0].idxs || [0, u.data[0].length - 1];
    let n = 0;
    for (let s = 1; s < u.series.length; s++) {
      if (!u.series[s].show || u.series[s].countsAsData === false) continue;
      const values = u.data[s];
      for (let i = i0; i <= i1; i++) if (values[i] != null && !Number.isNaN(values[i])) n++;
    }
    state.points[name] = n;
  };
}

function draw(name, opts, data) {
  const el = document.getElementById("chart-" + name);
  const width = Math.max(300, el.clientWidth);
  if (!data[0].length) {
    state.points[name] = 0;
    if (state.charts[name]) { state.charts[name].destroy(); delete state.charts[name]; }
    el.innerHTML = '<div class="empty">no data yet</div>';
    return;
  }
  const chart = state.charts[name];
  if (chart && chart.series.length === opts.series.length) {
    chart.setData(data);
    return;
  }
  if (chart) chart.destroy();
  el.innerHTML = "";
  opts.width = width;
  opts.height = opts.height || 240;
  opts.hooks = { draw: [countDrawn(name)] };
  state.charts[name] = new uPlot(opts, data, el);
}

// A time scale at least an hour wide, so one point does not stretch the axis over years.
const atLeastAnHour = (u) => {
  const xs = u.data[0];
  const lo = xs[0], hi = xs[xs.length - 1];
  return hi - lo < 3600 ? [lo - 1800, hi + 1800] : [lo, hi];
};

const fmt = (digits) => (u, v) => (v == null ? "—" : v.toFixed(digits));

async function drawTraffic() {
  const d = await getJSON("minutes");
  draw("traffic", {
    height: 230,
    scales: { x: { time: true }, n: {}, fee: {} },
    axes: [axis(null, 2), axis("tx / min", 3, { scale: "n" }), axis("avg fee (sat)", 1, { scale: "fee", grid: { show: false } })],
    series: [
      {},
      { label: "tx count", scale: "n", stroke: C.blue, fill: "rgba(78,161,255,0.12)", width: 1, value: fmt(0) },
      { label: "avg fee (sat)", scale: "fee", stroke: C.orange, width: 1.5, value: fmt(0) },
    ],
  }, [d.minute, d.tx_count, d.fee_avg_sat]);
}

async function drawForecast() {
  const d = await getJSON("forecasts");
  const versions = [...new Set(d.model_version)];
  document.getElementById("forecast-note").textContent =
    d.minute.length ? `${d.minute.length} forecasts, model version${versions.length > 1 ? "s" : ""} ${versions.join(", ")}` : "";
  draw("forecast", {
    height: 260,
    scales: { x: { time: true } },
    axes: [axis(null, 2), axis("avg fee (sat)", 3)],
    bands: [{ series: [3, 1], fill: "rgba(167,139,250,0.22)" }],
    series: [
      {},
      { label: "P10", stroke: "rgba(167,139,250,0.6)", width: 1, value: fmt(0) },
      { label: "P50", stroke: C.violet, width: 1.5, value: fmt(0) },
      { label: "P90", stroke: "rgba(167,139,250,0.6)", width: 1, value: fmt(0) },
      { label: "actual", stroke: C.orange, width: 1.5, value: fmt(0) },
    ],
  }, [d.minute, d.p10, d.p50, d.p90, d.actual]);
}

async function drawQuality() {
  const d = await getJSON("quality");
  // One x axis for the hourly verdicts and the sliding window: merge the two time lines.
  const xs = [...new Set([...d.sliding.minute, ...d.hours.hour.map((h) => h + 1800)])].sort((a, b) => a - b);
  // Hourly verdicts sit at the middle of their hour; breaches and good hours are two series.
  const mid = (h) => h + 1800;
  const ok = new Map(d.hours.hour.map((h, i) => [mid(h), d.hours.breach[i] ? null : d.hours.wql[i]]));
  const bad = new Map(d.hours.hour.map((h, i) => [mid(h), d.hours.breach[i] ? d.hours.wql[i] : null]));
  const sliding = new Map(d.sliding.minute.map((m, i) => [m, d.sliding.wql[i]]));
  const breaches = d.hours.breach.filter(Boolean).length;
  document.getElementById("quality-note").textContent =
    d.hours.hour.length ? `${d.hours.hour.length} hours judged, ${breaches} breach${breaches === 1 ? "" : "es"}` : "";
  draw("quality", {
    height: 230,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, d.threshold * 1.5)] } },
    axes: [axis(null, 2), axis("wQL", 3)],
    series: [
      {},
      { label: "hour ok", stroke: C.green, width: 0, points: { show: true, size: 9, fill: C.green }, value: fmt(3) },
      { label: "hour breached", stroke: C.red, width: 0, points: { show: true, size: 9, fill: C.red }, value: fmt(3) },
      { label: "60-min sliding", stroke: C.blue, width: 1.5, spanGaps: true, value: fmt(3) },
      { label: "threshold", stroke: C.muted, dash: [6, 4], width: 1, countsAsData: false, value: fmt(2) },
    ],
  }, [xs, xs.map((x) => ok.get(x) ?? null), xs.map((x) => bad.get(x) ?? null), xs.map((x) => sliding.get(x) ?? null), xs.map(() => d.threshold)]);
  const alarm = document.getElementById("alarm-status");
  const n = d.hours.wql.length;
  const last = n ? d.hours.wql[n - 1] : null;
  if (d.alarm) {
    alarm.textContent = `alarm: ${d.breaches_for_alarm} hours over wQL ${d.threshold}`;
  } else if (last == null) {
    alarm.textContent = "no hour judged yet";
  } else {
    alarm.textContent = `last hour wQL ${last.toFixed(2)} ${d.hours.breach[n - 1] ? ">" : "≤"} ${d.threshold}`;
  }
  alarm.className = "pill " + (d.alarm || (n && d.hours.breach[n - 1]) ? "bad" : last == null ? "" : "ok");
}

async function drawModels() {
  const d = await getJSON("models");
  const champion = document.getElementById("champion");
  champion.textContent = d.champion ? `champion v${d.champion}` : "no champion";
  champion.className = "pill info";
  draw("models", {
    height: 230,
    scales: { x: { time: true, range: atLeastAnHour }, y: { range: (u, min, max) => [0, max + 1] } },
    axes: [axis(null, 2), axis("champion version", 3, { incrs: [1, 2, 5, 10] })],
    series: [
      {},
      { label: "champion", stroke: C.green, width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: true, size: 9, fill: C.green }, value: fmt(0) },
      { label: "rejected candidate", stroke: C.red, width: 0, points: { show: true, size: 8, fill: C.red }, value: fmt(0) },
    ],
  }, [d.time, d.champion_version, d.rejected_version]);
}

async function drawDrift() {
  const d = await getJSON("drift");
  const pill = document.getElementById("drift-status");
  pill.textContent = d.status === "alert" ? "drift: alert" : d.status === "ok" ? "drift: ok" : "drift: no check yet";
  pill.className = "pill " + (d.status === "alert" ? "bad" : d.status === "ok" ? "ok" : "");
  draw("drift", {
    height: 200,
    scales: { x: { time: true, range: atLeastAnHour }, y: { range: [0, 1] } },
    axes: [axis(null, 2), axis("drifted share", 3)],
    series: [
      {},
      { label: "drifted columns", stroke: C.orange, width: 1.5, points: { show: true, size: 8, fill: C.orange }, value: fmt(2) },
      { label: "alert above", stroke: C.muted, dash: [6, 4], width: 1, countsAsData: false, value: fmt(2) },
    ],
  }, [d.time, d.share, d.time.map(() => d.threshold)]);
  const list = document.getElementById("drift-reports");
  list.innerHTML = "";
  for (const report of d.reports) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = report.url;
    a.target = "_blank";
    a.textContent = report.name;
    li.append(a, document.createTextNode(`  ${new Date(report.time * 1000).toISOString().slice(0, 16).replace("T", " ")}`));
    list.append(li);
  }
  if (!d.reports.length) list.innerHTML = '<li class="muted">no Evidently report yet</li>';
}

async function drawEvents() {
  const events = await getJSON("events?limit=150");
  const body = document.querySelector("#events tbody");
  body.innerHTML = "";
  for (const e of events.slice().reverse()) {
    const tr = document.createElement("tr");
    const kindClass = "k-" + e.kind.split(".").pop();
    const details = Object.entries(e.details).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join("  ");
    tr.innerHTML = `<td class="time"></td><td class="kind ${kindClass}"></td><td class="details"></td>`;
    tr.children[0].textContent = new Date(e.time_ms).toISOString().slice(5, 19).replace("T", " ");
    tr.children[1].textContent = e.kind;
    tr.children[2].textContent = details;
    body.append(tr);
  }
  state.points.events = events.length;
}

async function refresh() {
  const parts = [drawTraffic, drawForecast, drawQuality, drawModels, drawDrift, drawEvents];
  const results = await Promise.allSettled(parts.map((part) => part()));
  state.errors = results.filter((r) => r.status === "rejected").map((r) => String(r.reason));
  state.refreshes += 1;
  document.getElementById("updated").textContent =
    `updated ${new Date().toISOString().slice(11, 19)} UTC` + (state.errors.length ? ` · ${state.errors.length} error(s)` : "");
}

window.addEventListener("resize", () => {
  for (const [name, chart] of Object.entries(state.charts)) {
    chart.setSize({ width: document.getElementById("chart-" + name).clientWidth, height: chart.height });
  }
});

refresh();
setInterval(refresh, REFRESH_MS);
