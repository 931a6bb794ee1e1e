// deepscope dashboard: runs list and scalar curves. Data arrives only as JSON and enters the page only
// through textContent / Plotly's data arrays, never as HTML.

const TOKEN = new URLSearchParams(window.location.search).get("token");
const POINTS = 2000;
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#bc4c00", "#6e7781"];

const state = { runs: [], selected: new Set(), tag: null, range: null, series: new Map(), seq: 0 };
const $ = (id) => document.getElementById(id);

async function api(path, params = {}) {
  const url = new URL(path, window.location.href);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) url.searchParams.set(key, String(value));
  }
  const headers = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
  const response = await fetch(url, { headers });
  if (!response.ok) throw new Error(`${response.status} ${response.statusText} for ${url.pathname}`);
  return response.json();
}

const encodePath = (text) => text.split("/").map(encodeURIComponent).join("/");

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function colorOf(runId) {
  return COLORS[state.runs.findIndex((run) => run.id === runId) % COLORS.length];
}

function renderRuns() {
  const list = $("runs");
  list.replaceChildren();
  for (const run of state.runs) {
    const item = el("li");
    const label = el("label");
    const box = el("input");
    box.type = "checkbox";
    box.value = run.id;
    box.dataset.run = run.id;
    box.checked = state.selected.has(run.id);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(run.id);
      else state.selected.delete(run.id);
      refreshTags().catch((error) => setStatus(error.message, true));
    });
    const swatch = el("span", "swatch");
    swatch.style.background = colorOf(run.id);
    const text = el("span");
    text.append(el("span", "name", run.name));
    const created = run.created ? new Date(run.created * 1000).toLocaleString() : "";
    text.append(el("span", "meta", `${run.id} · ${run.status} · ${run.scalar_tags} tags ${created ? "· " + created : ""}`));
    label.append(box, swatch, text);
    item.append(label);
    list.append(item);
  }
  if (state.runs.length === 0) list.append(el("li", "muted", "No runs found under this folder."));
}

async function refreshTags() {
  const select = $("tag");
  const lists = await Promise.all([...state.selected].map((id) => api(`api/runs/${encodePath(id)}/scalars`)));
  const tags = [...new Set(lists.flatMap((answer) => answer.tags))].sort();
  select.replaceChildren(...tags.map((tag) => {
    const option = el("option", null, tag);
    option.value = tag;
    return option;
  }));
  select.disabled = tags.length === 0;
  state.tag = tags.includes(state.tag) ? state.tag : (tags[0] ?? null);
  if (state.tag !== null) select.value = state.tag;
  state.range = null;
  await fetchAndDraw();
}

async function fetchAndDraw() {
  const seq = ++state.seq;  // a later request supersedes this one
  const tag = state.tag;
  const runs = tag === null ? [] : [...state.selected];
  const params = { points: POINTS, start: state.range?.[0], end: state.range?.[1] };
  const answers = await Promise.all(runs.map(async (id) => {
    try {
      return await api(`api/runs/${encodePath(id)}/scalars/${encodePath(tag)}`, params);
    } catch {
      return null;  // this run has no such tag
    }
  }));
  if (seq !== state.seq) return;
  state.series = new Map(runs.map((id, i) => [id, answers[i]]).filter(([, answer]) => answer !== null));
  draw();
}

function ema(values, weight) {
  if (weight <= 0) return values;
  let last = 0;
  let count = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return v;
    last = last * weight + (1 - weight) * v;
    count += 1;
    return last / (1 - weight ** count);  // debiased, as TensorBoard
  });
}

function draw() {
  const weight = Number($("smoothing").value);
  const log = $("log").checked;
  const nameOf = new Map(state.runs.map((run) => [run.id, run.name]));
  const traces = [...state.series].map(([id, answer]) => ({
    type: "scatter",
    mode: answer.steps.length < 2 ? "markers" : "lines",
    name: nameOf.get(id) ?? id,
    x: answer.steps,
    y: ema(answer.values, weight),
    line: { color: colorOf(id), width: 1.6 },
    hovertemplate: "step %{x}<br>%{y:.5g}<extra>%{fullData.name}</extra>",
  }));
  const layout = {
    margin: { l: 60, r: 20, t: 30, b: 45 },
    title: { text: state.tag ?? "", font: { size: 14 } },
    xaxis: { title: { text: "step" }, ...(state.range ? { range: state.range } : { autorange: true }) },
    yaxis: { type: log ? "log" : "linear", autorange: true },
    legend: { orientation: "h", y: -0.18 },
    showlegend: true,
    uirevision: state.tag,
    hovermode: "x unified",
    font: { family: "system-ui, sans-serif", size: 12 },
  };
  Plotly.react($("chart"), traces, layout, { responsive: true, displaylogo: false });
  const shown = [...state.series.values()];
  const total = shown.reduce((sum, a) => sum + a.total, 0);
  const drawn = shown.reduce((sum, a) => sum + a.steps.length, 0);
  const sampled = shown.some((a) => a.downsampled);
  $("points").textContent = shown.length
    ? `${drawn.toLocaleString()} of ${total.toLocaleString()} points drawn${sampled ? " (min/max downsampled; zoom in for full resolution)" : ""}`
    : "Select runs and a tag.";
}

function onRelayout(event) {
  if (event["xaxis.autorange"]) state.range = null;
  else if ("xaxis.range[0]" in event) state.range = [Math.floor(event["xaxis.range[0]"]), Math.ceil(event["xaxis.range[1]"])];
  else if (Array.isArray(event["xaxis.range"])) state.range = [Math.floor(event["xaxis.range"][0]), Math.ceil(event["xaxis.range"][1])];
  else return;
  fetchAndDraw().catch((error) => setStatus(error.message, true));
}

async function main() {
  $("tag").addEventListener("change", (event) => {
    state.tag = event.target.value;
    state.range = null;
    fetchAndDraw().catch((error) => setStatus(error.message, true));
  });
  $("smoothing").addEventListener("input", (event) => {
    $("smoothing-value").textContent = Number(event.target.value).toFixed(2);
    draw();
  });
  $("log").addEventListener("change", draw);
  Plotly.newPlot($("chart"), [], { margin: { t: 30 } }, { responsive: true, displaylogo: false });
  $("chart").on("plotly_relayout", onRelayout);
  const answer = await api("api/runs");
  state.runs = answer.runs;
  renderRuns();
  setStatus(`${state.runs.length} run${state.runs.length === 1 ? "" : "s"}`);
  draw();
  document.body.dataset.ready = "true";
}

main().catch((error) => setStatus(error.message, true));
