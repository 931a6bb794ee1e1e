// Layer health: a layer × step heat map of one statistic (click a cell for that layer in detail), the gradient
// flow across layers with a step slider and the doctor's vanishing/exploding bounds, and residual-block ratios.
// User strings (layer, block and statistic names) go into Plotly labels HTML-escaped and into the page as text.
import { api, chart, el, escapeHtml, fmt, plot, select, table } from "../ui.js";

const COLUMNS = 600;
const AGGREGATES = { max: "highest", min: "lowest", absmax: "farthest from 0" };
const GREY = "#8c959f";


// log10 for colouring; zero and negative values sit at the bottom of the scale (the smallest positive value).
function logged(rows) {
  let floor = Infinity;
  for (const row of rows) for (const v of row) if (v !== null && v > 0 && v < floor) floor = v;
  if (!Number.isFinite(floor)) floor = 1;
  return rows.map((row) => row.map((v) => (v === null ? null : Math.log10(Math.max(v, floor)))));
}

// Axis labels for layer names: at most 40 characters on the axis (the hover shows the whole name).
const short = (name) => (name.length > 40 ? `${name.slice(0, 39)}…` : name);
const ticks = (names) => ({
  tickmode: "array",
  tickvals: names.map((_, i) => i),
  ticktext: names.map((name) => escapeHtml(short(name))),
});
const LOG_AXIS = { type: "log", dtick: 1, exponentformat: "power" };

const hline = (y, color, dash = "dash") => ({
  type: "line", xref: "paper", x0: 0, x1: 1, y0: y, y1: y, line: { color, dash, width: 1.2 },
});

const note = (y, text) => ({
  xref: "paper", x: 1, xanchor: "right", y: Math.log10(y), yanchor: "bottom", text, showarrow: false,
  font: { size: 10, color: "#57606a" },
});

// Called by the shell before plotly.js runs: the summary, then the heat map's request in flight.
export async function prefetch(ctx) {
  const summary = await api("health/summary", { run: ctx.run });
  const shown = summary.statistics.filter((s) => s.layers > 0).map((s) => s.name);
  const remembered = ctx.remember("statistic");
  const statistic = shown.includes(remembered) ? remembered : summary.default;
  return { summary, statistic, heat: api("health/heatmap", { run: ctx.run, statistic, columns: COLUMNS }) };
}

export async function render(container, ctx, early = null) {
  const state = {
    summary: null, heat: null, flow: null, detail: null, statistic: ctx.remember("statistic"), log: ctx.remember("log"),
    pick: ctx.remember("layer") ? { layer: ctx.remember("layer"), step: null } : null, // the step: this run's own
    flowStep: ctx.remember("flowStep"), seq: 0, detailSeq: 0,
  };
  const root = el("div", "health");
  root.dataset.run = ctx.run;
  const controls = el("div", "controls health-controls");
  const alert = el("p", "error health-alert");
  alert.hidden = true;
  const heatNote = el("p", "muted health-note");
  heatNote.id = "health-note";
  const heatNode = chart(320, "chart health-heatmap");
  heatNode.id = "health-heatmap";

  const detail = el("section", "health-detail");
  detail.id = "health-detail";
  const detailTitle = el("h3", "health-detail-title", "Click a cell of the heat map");
  detailTitle.id = "health-detail-title";
  const seriesNode = chart(300, "chart health-series");
  seriesNode.id = "health-series";
  const valuesBox = el("div", "health-values");
  valuesBox.id = "health-values";
  const distBox = el("div", "health-distribution");
  distBox.id = "health-distribution";
  const grid = el("div", "health-grid");
  grid.append(seriesNode, valuesBox);
  detail.append(detailTitle, grid, distBox);

  const flowSection = el("section", "health-flow");
  flowSection.id = "health-flow";
  const flowSlider = el("input");
  Object.assign(flowSlider, { type: "range", min: "0", max: "0", step: "1", value: "0", id: "health-flow-step" });
  flowSlider.setAttribute("aria-label", "training step of the gradient flow");
  const flowStepLabel = el("output", "health-flow-label");
  flowStepLabel.id = "health-flow-label";
  const flowControl = el("label", "control");
  flowControl.append(el("span", null, "Step"), flowSlider, flowStepLabel);
  const flowNode = chart(340, "chart health-flow-chart");
  flowNode.id = "health-flow-chart";
  const ratioNode = chart(260, "chart health-ratio");
  ratioNode.id = "health-ratio";
  const flowText = el("p", "muted");
  flowSection.append(el("h3", null, "Gradient flow"), flowText, flowControl, flowNode, ratioNode);

  const residualSection = el("section", "health-residual");
  residualSection.id = "health-residual";
  const residualNode = chart(280, "chart health-residual-chart");
  residualSection.append(
    el("h3", null, "Residual blocks"),
    el("p", "muted", "‖F(x)‖ / ‖skip(x)‖ per block: far below 1 the block barely changes its input " +
      "(the doctor notes blocks under the dashed line)."),
    residualNode,
  );
  residualSection.hidden = true;
  root.append(controls, alert, heatNote, heatNode, detail, flowSection, residualSection);
  container.append(root);

  const info = (name) => state.summary.statistics.find((s) => s.name === name);

  function buildControls() {
    const shown = state.summary.statistics.filter((s) => s.layers > 0);
    const menu = select(shown.map((s) => [s.name, `${s.title} (${s.name})`]), state.statistic, (name) => {
      state.statistic = name;
      state.log = info(name).log;
      ctx.remember("statistic", name);
      ctx.remember("log", state.log);
      logBox.checked = state.log;
      loadHeatmap().then(loadDetail).catch(ctx.fail);
    }, "Statistic");
    menu.querySelector("select").id = "health-statistic";
    const logBox = el("input");
    Object.assign(logBox, { type: "checkbox", id: "health-log", checked: state.log });
    logBox.addEventListener("change", () => {
      state.log = logBox.checked;
      ctx.remember("log", state.log);
      drawHeatmap();
      drawDetail();
    });
    const logLabel = el("label", "control");
    logLabel.append(logBox, el("span", null, "Log colour"));
    controls.replaceChildren(menu, logLabel);
  }

  function columnOf(step) {
    const heat = state.heat;
    const c = heat.x_end.findIndex((end) => step <= end);
    return c < 0 ? heat.x.length - 1 : c;
  }

  function drawHeatmap() {
    const heat = state.heat;
    const rows = heat.layers.length;
    heatNode.dataset.rows = String(rows);
    heatNode.dataset.columns = String(heat.x.length);
    heatNode.dataset.statistic = heat.statistic;
    heatNode.style.height = `${Math.max(260, 22 * rows + 120)}px`;
    const spans = heat.column_steps;
    const lo = Math.min(...spans);
    const hi = Math.max(...spans);
    heatNote.textContent = rows === 0
      ? `No layer has a value of ${heat.title}.`
      : `${heat.steps.toLocaleString()} measured steps in ${heat.x.length} columns of ${lo === hi ? lo : `${lo}–${hi}`} ` +
        `step${hi === 1 ? "" : "s"}; each column shows the ${AGGREGATES[heat.aggregate] ?? heat.aggregate} value ` +
        `of its steps (${heat.aggregate}). Click a cell to see that layer at the step of that value.`;
    const names = heat.layers.map(escapeHtml);
    const spanText = (c) => (heat.x[c] === heat.x_end[c] ? `step ${heat.x[c]}` : `steps ${heat.x[c]}–${heat.x_end[c]}`);
    const custom = heat.values.map((row, r) =>
      row.map((v, c) => [names[r], spanText(c), heat.worst_steps[r][c], fmt(v, 4)]));
    const useLog = state.log;
    const limits = !useLog && heat.limits ? { zmin: heat.limits[0], zmax: heat.limits[1] } : {};
    const traces = [{
      type: "heatmap", x: heat.x, y: heat.layers.map((_, i) => i), z: useLog ? logged(heat.values) : heat.values,
      customdata: custom, colorscale: "Viridis", ygap: 1, ...limits,
      colorbar: { title: { text: useLog ? "log10" : "" }, thickness: 12 },
      hovertemplate: "%{customdata[0]}<br>%{customdata[1]}<br>value %{customdata[3]} at step %{customdata[2]}<extra></extra>",
    }];
    if (heat.nonfinite.length) {
      traces.push({
        type: "scatter", mode: "markers", name: "not finite", hoverinfo: "skip",
        x: heat.nonfinite.map(([, c]) => heat.x[c]), y: heat.nonfinite.map(([r]) => r),
        marker: { symbol: "x", color: "#cf222e", size: 9 },
      });
    }
    const r = state.pick ? heat.layers.indexOf(state.pick.layer) : -1;
    if (r >= 0) {
      traces.push({
        type: "scatter", mode: "markers", name: "selected", hoverinfo: "skip", x: [heat.x[columnOf(state.pick.step)]],
        y: [r], marker: { symbol: "square-open", color: "#cf222e", size: 14, line: { width: 2 } },
      });
    }
    plot(heatNode, traces, {
      title: { text: `${escapeHtml(heat.title)} · layer × step`, font: { size: 14 } },
      margin: { l: 150, r: 20, t: 40, b: 45 },
      xaxis: { title: { text: "training step" }, zeroline: false },
      yaxis: { ...ticks(heat.layers), autorange: "reversed", automargin: true, zeroline: false },
      showlegend: false,
      uirevision: heat.statistic,
    });
  }

  async function loadHeatmap(prefetched = null) {
    const seq = ++state.seq;
    const heat = await (prefetched ?? api("health/heatmap", { run: ctx.run, statistic: state.statistic, columns: COLUMNS }));
    if (seq !== state.seq) return;
    state.heat = heat;
    if (state.pick && !heat.layers.includes(state.pick.layer)) state.pick = null;
    if (!state.pick && heat.layers.length) state.pick = { layer: heat.layers[0], step: null };
    if (state.pick && state.pick.step === null) { // the worst value of the latest column
      state.pick.step = heat.worst_steps[heat.layers.indexOf(state.pick.layer)][heat.x.length - 1];
    }
    drawHeatmap();
  }

  function drawDetail() {
    const d = state.detail;
    if (!d) return;
    detail.dataset.layer = d.layer;
    detail.dataset.step = String(d.step);
    detailTitle.textContent = `${d.layer} · step ${d.step}`;
    const s = d.series;
    const i = s.steps.indexOf(d.step);
    plot(seriesNode, [
      { type: "scatter", mode: s.steps.length < 2 ? "markers" : "lines", x: s.steps, y: s.values, name: d.statistic,
        line: { color: "#0969da", width: 1.5 }, hovertemplate: "step %{x}<br>%{y:.4g}<extra></extra>" },
      { type: "scatter", mode: "markers", x: i >= 0 ? [d.step] : [], y: i >= 0 ? [s.values[i]] : [], name: "clicked",
        marker: { color: "#cf222e", size: 9 }, hoverinfo: "skip" },
    ], {
      title: { text: `${escapeHtml(d.title)} of ${escapeHtml(d.layer)}`, font: { size: 13 } },
      xaxis: { title: { text: "training step" } },
      yaxis: { type: state.log ? "log" : "linear", tickformat: ".3~g", title: { text: escapeHtml(d.title) } },
      shapes: [{ type: "line", yref: "paper", y0: 0, y1: 1, x0: d.step, x1: d.step, line: { color: "#cf222e", dash: "dot", width: 1 } }],
      showlegend: false,
    });
    seriesNode.dataset.points = String(s.steps.length);
    const caption = `${s.total.toLocaleString()} measured steps${s.downsampled ? `, ${s.steps.length} drawn (lowest and highest of each bucket kept)` : ""}`;
    const rows = [["statistic", "value"], ...d.values.map((v) => [v.title, fmt(v.value, 4)])];
    const node = table(rows, "data health-table");
    [...node.rows].slice(1).forEach((tr, k) => {
      tr.dataset.statistic = d.values[k].statistic;
      tr.classList.toggle("health-current", d.values[k].statistic === d.statistic);
    });
    valuesBox.replaceChildren(el("p", "muted", `All statistics at step ${d.step}`), node, el("p", "muted", caption));
    drawDistribution();
  }

  function drawDistribution() {
    const d = state.detail;
    distBox.replaceChildren();
    if (!d.distribution) {
      if (!state.summary.distributions) {
        distBox.append(el("p", "muted", "No value distributions were recorded (Recorder(histogram_bins=N) records them)."));
      } else {
        distBox.append(el("p", "muted", `No distribution was recorded at step ${d.step}.`));
      }
      return;
    }
    const pair = el("div", "health-pair");
    distBox.append(el("h4", null, `Distributions at step ${d.distribution.step}`), pair); // in the page before plotting
    for (const [kind, label] of [["output", "output values"], ["weights", "weights"]]) {
      const summary = d.distribution[kind];
      const box = el("div", "health-dist");
      box.dataset.kind = kind;
      pair.append(box);
      if (!summary) {
        box.append(el("p", "muted", `${label}: not measured for this layer`));
      } else {
        const node = chart(220, "chart");
        box.append(node);
        const centres = summary.counts.map((_, k) => (summary.edges[k] + summary.edges[k + 1]) / 2);
        const width = summary.edges[1] - summary.edges[0];
        plot(node, [{ type: "bar", x: centres, y: summary.counts, width: width || undefined, marker: { color: "#8250df" },
          hovertemplate: "%{x:.4g}: %{y} values<extra></extra>" }], {
          title: { text: `${label} (${summary.total.toLocaleString()} values)`, font: { size: 12 } },
          margin: { l: 50, r: 10, t: 32, b: 36 }, bargap: 0.02,
          shapes: summary.quantiles.filter(([, v]) => v !== null).map(([level, v]) => ({
            type: "line", yref: "paper", y0: 0, y1: 1, x0: v, x1: v,
            line: { color: level === 0.5 ? "#cf222e" : GREY, dash: "dot", width: 1 },
          })),
        });
        box.append(el("p", "muted", "quantiles " + summary.quantiles.map(([l, v]) => `${Math.round(l * 100)} %: ${fmt(v, 3)}`).join(" · ")));
      }
    }
  }

  async function loadDetail() {
    if (!state.pick) return;
    const seq = ++state.detailSeq; // a later click supersedes this one
    ctx.remember("layer", state.pick.layer);
    const { layer, step } = state.pick;
    const answer = await api("health/layer", { run: ctx.run, layer, statistic: state.statistic, step });
    if (seq !== state.detailSeq) return;
    state.detail = answer;
    drawDetail();
  }

  function drawFlow() {
    const f = state.flow;
    const k = Number(flowSlider.value);
    state.flowStep = f.steps[k];
    ctx.remember("flowStep", state.flowStep);
    flowStepLabel.textContent = String(f.steps[k]);
    flowNode.dataset.step = String(f.steps[k]);
    const x = f.layers.map((_, i) => i);
    flowNode.style.height = `${Math.round(280 + 6.5 * Math.max(...f.layers.map((name) => short(name).length)))}px`;
    const last = f.norms[k][f.layers.length - 1];
    const traces = [];
    if (k !== 0) {
      traces.push({ type: "scatter", mode: "lines+markers", x, y: f.norms[0], name: `step ${f.steps[0]}`,
        line: { color: GREY, width: 1, dash: "dot" }, marker: { size: 4 } });
    }
    traces.push({ type: "scatter", mode: "lines+markers", x, y: f.norms[k], name: `step ${f.steps[k]}`,
      customdata: f.layers.map(escapeHtml), line: { color: "#0969da", width: 2 },
      hovertemplate: "%{customdata}<br>‖∇‖ = %{y:.3g}<extra></extra>" });
    const bounds = last > 0 ? [[last * f.vanishing_ratio, "vanishing bound"], [last * f.exploding_ratio, "exploding bound"]] : [];
    plot(flowNode, traces, {
      title: { text: `Gradient norm per layer at step ${f.steps[k]}`, font: { size: 13 } },
      xaxis: { ...ticks(f.layers), tickangle: -90, automargin: true, zeroline: false, title: { text: "layer (input → output)" } },
      yaxis: { ...LOG_AXIS, title: { text: "gradient L2 norm" } },
      shapes: bounds.map(([y]) => hline(y, "#bf8700")),
      annotations: bounds.map(([y, text]) => note(y, text)),
      legend: { orientation: "h", y: 1.1, x: 0 },
      uirevision: "flow",
    });
    const r = f.ratio;
    plot(ratioNode, [{ type: "scatter", mode: r.steps.length < 2 ? "markers" : "lines", x: r.steps, y: r.values,
      line: { color: "#1a7f37", width: 1.5 }, hovertemplate: "step %{x}<br>ratio %{y:.3g}<extra></extra>" }], {
      title: { text: `‖∇${escapeHtml(f.first_layer)}‖ / ‖∇${escapeHtml(f.last_layer)}‖ over training`, font: { size: 13 } },
      xaxis: { title: { text: "training step" } },
      yaxis: { ...LOG_AXIS, title: { text: "first / last" } },
      shapes: [hline(f.vanishing_ratio, "#bf8700"), hline(f.exploding_ratio, "#bf8700"),
        { type: "line", yref: "paper", y0: 0, y1: 1, x0: f.steps[k], x1: f.steps[k], line: { color: GREY, dash: "dot", width: 1 } }],
      annotations: [note(f.vanishing_ratio, `vanishing < ${f.vanishing_ratio}`), note(f.exploding_ratio, `exploding > ${f.exploding_ratio}`)],
      showlegend: false,
    });
  }

  async function loadFlow() {
    flowSection.hidden = !state.summary.gradient_flow;
    if (flowSection.hidden) return;
    state.flow = await api("health/flow", { run: ctx.run });
    const f = state.flow;
    flowText.textContent = "Gradient L2 norm of each layer's parameters, input side on the left. The doctor flags " +
      `vanishing gradients when the first layer's norm stays below ${f.vanishing_ratio} × the last layer's ` +
      `(lower dashed line) and exploding ones above ${f.exploding_ratio} × (upper dashed line).`;
    flowSlider.max = String(f.steps.length - 1);
    const k = f.steps.indexOf(state.flowStep);
    flowSlider.value = String(k >= 0 ? k : f.steps.length - 1);
    drawFlow();
  }
  flowSlider.addEventListener("input", () => drawFlow());

  async function loadResidual() {
    residualSection.hidden = state.summary.residual_blocks.length === 0;
    if (residualSection.hidden) return;
    const answer = await api("health/residual", { run: ctx.run });
    residualNode.dataset.blocks = String(answer.blocks.length);
    plot(residualNode, answer.blocks.map((b, i) => ({
      type: "scatter", mode: b.steps.length < 2 ? "markers" : "lines", x: b.steps, y: b.values, name: escapeHtml(b.block),
      line: { width: 1.5, color: ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83"][i % 6] },
      hovertemplate: "step %{x}<br>%{y:.3g}<extra>%{fullData.name}</extra>",
    })), {
      title: { text: "Residual ratio ‖F(x)‖ / ‖skip(x)‖", font: { size: 13 } },
      xaxis: { title: { text: "training step" } },
      yaxis: { ...LOG_AXIS, title: { text: "ratio" } },
      shapes: [hline(answer.threshold, "#bf8700")],
      annotations: [note(answer.threshold, `idle < ${answer.threshold}`)],
      legend: { orientation: "h", y: -0.25 },
      showlegend: true,
    });
  }

  async function load(prefetched = null) {
    state.summary = prefetched ? prefetched.summary : await api("health/summary", { run: ctx.run });
    const shown = state.summary.statistics.filter((s) => s.layers > 0).map((s) => s.name);
    if (!shown.includes(state.statistic)) {
      state.statistic = state.summary.default;
      state.log = null;
    }
    if (state.log === null || state.log === undefined) state.log = info(state.statistic)?.log ?? false;
    buildControls();
    const first = state.summary.nonfinite_step;
    alert.hidden = first === null || first === undefined;
    alert.textContent = alert.hidden ? "" : `Non-finite values from step ${first} on (marked ✕ in the heat map).`;
    const heat = prefetched && prefetched.statistic === state.statistic ? prefetched.heat : null;
    await Promise.all([loadHeatmap(heat).then(loadDetail), loadFlow(), loadResidual()]);
  }

  await load(early);
  heatNode.on("plotly_click", (event) => {
    const point = event.points?.find((p) => p.data.type === "heatmap");
    if (!point) return;
    const [r, c] = point.pointIndex;
    state.pick = { layer: state.heat.layers[r], step: state.heat.worst_steps[r][c] };
    drawHeatmap();
    loadDetail().catch(ctx.fail);
  });
  return { refresh: () => load().catch(ctx.fail) };
}
