// Scalars: one tag of every selected run overlaid; EMA smoothing, log scale; zoom refetches the range.
import { api, chart, el, escapeHtml, fmt, plot, select, table } from "../ui.js";

const POINTS = 2000;

function ema(values, weight) {
  if (weight <= 0) return values;
  let last = 0;
  let count = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return v;
    last = last * weight + (1 - weight) * v;
    count += 1;
    return last / (1 - weight ** count); // debiased, as TensorBoard
  });
}

async function loadTags(runs) {
  const lists = await Promise.all(runs.map((run) => api("scalars/tags", { run }).catch(() => ({ tags: [] }))));
  return [...new Set(lists.flatMap((answer) => answer.tags))].sort();
}

function defaultTag(tags, remembered) {
  if (tags.includes(remembered)) return remembered;
  return tags.includes("train/loss") ? "train/loss" : (tags[0] ?? null);
}

const fetchSeries = (runs, params) =>
  Promise.all(runs.map((run) => api("scalars/series", { run, ...params }).catch(() => null))); // a run may lack the tag

// Called by the shell before plotly.js runs: resolves once the first view's requests are in flight.
export async function prefetch(ctx) {
  const tags = await loadTags(ctx.runs);
  const tag = defaultTag(tags, ctx.remember("tag"));
  const answers = tag === null ? Promise.resolve([]) : fetchSeries(ctx.runs, { tag, points: POINTS });
  return { tags, tag, answers };
}

export async function render(container, ctx, early = null) {
  const state = { tag: ctx.remember("tag"), range: null, series: new Map(), seq: 0, weight: 0, log: false };
  const controls = el("div", "controls");
  const plotNode = chart(480);
  const note = el("p", "muted");
  const summary = el("div", "scalars-summary");
  container.append(controls, plotNode, note, summary);

  function draw() {
    const traces = [...state.series].map(([run, answer]) => ({
      type: "scatter",
      mode: answer.steps.length < 2 ? "markers" : "lines",
      name: escapeHtml(ctx.nameOf(run)),
      x: answer.steps,
      y: ema(answer.values, state.weight),
      line: { color: ctx.colorOf(run), width: 1.6 },
      hovertemplate: "step %{x}<br>%{y:.5g}<extra>%{fullData.name}</extra>",
    }));
    plot(plotNode, traces, {
      title: { text: escapeHtml(state.tag ?? ""), font: { size: 14 } },
      xaxis: { title: { text: "step" }, ...(state.range ? { range: state.range } : { autorange: true }) },
      yaxis: { type: state.log ? "log" : "linear", autorange: true },
      legend: { orientation: "h", y: -0.18 },
      showlegend: true,
      uirevision: state.tag,
      hovermode: "x unified",
    });
    const shown = [...state.series.values()];
    const total = shown.reduce((sum, a) => sum + a.total, 0);
    const drawn = shown.reduce((sum, a) => sum + a.steps.length, 0);
    const sampled = shown.some((a) => a.downsampled);
    note.textContent = shown.length
      ? `${drawn.toLocaleString()} of ${total.toLocaleString()} points drawn${sampled ? " (lowest and highest point of each bucket kept; zoom in for full resolution)" : ""}`
      : "The selected runs have no scalars.";
    plotNode.dataset.points = String(drawn);
    summarise();
  }

  // One row per run: the tag's last, lowest and highest values (exact: bucketing keeps every extreme).
  function summarise() {
    const rows = [["run", "points", "last step", "last value", "lowest", "highest"]];
    for (const [run, answer] of state.series) {
      const finite = answer.values.filter((v) => v !== null);
      const last = answer.values.length - 1;
      rows.push([
        ctx.nameOf(run),
        answer.total.toLocaleString(),
        last >= 0 ? String(answer.steps[last]) : "—",
        last >= 0 ? fmt(answer.values[last], 4) : "—",
        finite.length && !state.range ? fmt(Math.min(...finite), 4) : "—",
        finite.length && !state.range ? fmt(Math.max(...finite), 4) : "—",
      ]);
    }
    summary.replaceChildren(...(rows.length > 1 ? [table(rows)] : []));
  }

  async function fetchAndDraw(prefetched = null) {
    const seq = ++state.seq; // a later request supersedes this one
    const params = { tag: state.tag, points: POINTS, start: state.range?.[0], end: state.range?.[1] };
    const answers = prefetched ?? (state.tag === null ? [] : await fetchSeries(ctx.runs, params));
    if (seq !== state.seq) return;
    state.series = new Map(ctx.runs.map((run, i) => [run, answers[i]]).filter(([, answer]) => answer !== null));
    draw();
  }

  const first = early;
  const tags = first ? first.tags : await loadTags(ctx.runs);
  state.tag = first ? first.tag : defaultTag(tags, state.tag);
  const smoothing = el("input");
  Object.assign(smoothing, { type: "range", min: "0", max: "0.99", step: "0.01", value: "0", id: "smoothing" });
  const smoothingValue = el("output", null, "0.00");
  smoothing.addEventListener("input", () => {
    state.weight = Number(smoothing.value);
    smoothingValue.textContent = state.weight.toFixed(2);
    draw();
  });
  const logBox = el("input");
  Object.assign(logBox, { type: "checkbox", id: "log" });
  logBox.addEventListener("change", () => { state.log = logBox.checked; draw(); });
  const tagSelect = select(tags, state.tag, (tag) => {
    state.tag = tag;
    ctx.remember("tag", tag);
    state.range = null;
    fetchAndDraw().catch(ctx.fail);
  }, "Tag");
  tagSelect.querySelector("select").id = "tag";
  const smoothLabel = el("label", "control");
  smoothLabel.append(el("span", null, "Smoothing"), smoothing, smoothingValue);
  const logLabel = el("label", "control");
  logLabel.append(logBox, el("span", null, "Log scale"));
  controls.append(tagSelect, smoothLabel, logLabel);

  await fetchAndDraw(first ? await first.answers : null);
  plotNode.on("plotly_relayout", (event) => {
    if (event["xaxis.autorange"]) state.range = null;
    else if ("xaxis.range[0]" in event) state.range = [Math.floor(event["xaxis.range[0]"]), Math.ceil(event["xaxis.range[1]"])];
    else if (Array.isArray(event["xaxis.range"])) state.range = [Math.floor(event["xaxis.range"][0]), Math.ceil(event["xaxis.range"][1])];
    else return;
    fetchAndDraw().catch(ctx.fail);
  });
  return { refresh: () => fetchAndDraw() };
}
