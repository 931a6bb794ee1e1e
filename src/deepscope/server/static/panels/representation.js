// Representations: a layer's probe-set snapshots in 2-D (the report's aligned, z-scored frames), the decision
// map of 2-D toy tasks and the feature evolution tiles, all driven by one step slider with play/pause.
// Every frame of the chosen layer arrives in one answer, so the slider moves locally; decision maps and
// evolution tiles are fetched per step and kept. User strings enter as textContent or escaped Plotly labels.
import { api, chart, el, escapeHtml, fmt, image, plot, select } from "../ui.js";

const PLAY_MS = 600;
const WRONG = { symbol: "circle-open", size: 10, color: "#000", opacity: 0.8, line: { width: 1.3, color: "#000" } };

// Plotly renders a subset of HTML in names, hover text and titles: `&`, `<` and `>` are enough to keep a
// user string from forming a tag (Plotly does not decode `&quot;`, so quotes stay as they are).

// Index of the last entry of the ascending `steps` at or before `step` (the first one if none is).
function atOrBefore(steps, step) {
  let found = 0;
  for (let i = 0; i < steps.length && steps[i] <= step; i += 1) found = i;
  return found;
}

const pct = (value) => (value === null || value === undefined ? "—" : `${(100 * value).toFixed(1)} %`);

export async function render(container, ctx) {
  const state = {
    index: null,
    frames: null,
    byClass: [], // per class: the indices of its points
    layer: ctx.remember("layer"),
    projection: ctx.remember("projection") ?? "pca",
    steps: [], // the slider's steps: every step any view has
    position: 0,
    playing: false,
    timer: null,
    seq: 0,
    decisions: new Map(),
    evolutions: new Map(),
    viewsKey: null,
  };
  const root = el("div", "representation");
  const controls = el("div", "controls representation-controls");
  const views = el("div", "representation-views");
  const evolution = el("div", "representation-evolutions");

  const slider = el("input");
  Object.assign(slider, { type: "range", id: "representation-step", min: "0", max: "0", step: "1", value: "0" });
  slider.setAttribute("aria-label", "training step");
  const stepOut = el("output", "representation-step-value");
  stepOut.id = "representation-step-value";
  const play = el("button", "representation-play", "▶ Play");
  Object.assign(play, { type: "button", id: "representation-play" });
  play.setAttribute("aria-pressed", "false");
  const readout = el("p", "representation-accuracy");
  readout.id = "representation-accuracy";
  root.append(controls, readout, views, evolution);
  container.append(root);

  const scatterBox = el("section", "representation-view");
  const scatterTitle = el("h3", null);
  const scatterNote = el("p", "muted representation-note");
  const scatter = chart(520, "chart representation-chart");
  scatter.id = "representation-scatter";
  scatterBox.append(scatterTitle, scatter, scatterNote);
  const decisionBox = el("section", "representation-view");
  const decision = chart(520, "chart representation-chart");
  decision.id = "representation-decision";
  const decisionNote = el("p", "muted representation-note");
  decisionBox.append(el("h3", null, "Decision map in input space"), decision, decisionNote);

  const className = (k) => state.index.class_names[k] ?? `class ${k}`;

  function unionSteps() {
    const all = new Set(state.frames?.steps ?? []);
    for (const step of state.index.decision?.steps ?? []) all.add(step);
    for (const item of state.index.evolution) for (const step of item.steps) all.add(step);
    return [...all].sort((a, b) => a - b);
  }

  function buildControls() {
    const { layers, projections } = state.index;
    const parts = [];
    if (layers.length) {
      const layerSelect = select(layers.map((l) => l.name), state.layer, (value) => {
        state.layer = value;
        ctx.remember("layer", value);
        loadFrames().catch(ctx.fail);
      }, "Layer");
      layerSelect.querySelector("select").id = "representation-layer";
      parts.push(layerSelect);
      const wide = layers.find((l) => l.name === state.layer)?.width > 2;
      if (wide && projections.length > 1) {
        const projSelect = select(projections.map((p) => [p, p.toUpperCase()]), state.projection, (value) => {
          state.projection = value;
          ctx.remember("projection", value);
          loadFrames().catch(ctx.fail);
        }, "Projection");
        projSelect.querySelector("select").id = "representation-projection";
        parts.push(projSelect);
      }
    }
    const stepLabel = el("label", "control representation-slider");
    stepLabel.append(el("span", null, "Step"), slider, stepOut);
    parts.push(stepLabel, play);
    controls.replaceChildren(...parts);
  }

  // The views the run has (rebuilt only when that changes, so a refresh redraws the charts in place).
  function buildViews() {
    const shown = [];
    if (state.index.layers.length) shown.push(scatterBox);
    if (state.index.decision) shown.push(decisionBox);
    const key = JSON.stringify([shown.length, !!state.index.decision, state.index.evolution.map((e) => e.layer)]);
    if (key === state.viewsKey) return;
    state.viewsKey = key;
    views.replaceChildren(...shown);
    evolution.replaceChildren();
    for (const item of state.index.evolution) {
      const box = el("section", "representation-evolution");
      box.dataset.layer = item.layer;
      const grid = el("div", "representation-tiles");
      box.append(
        el("h3", null, `Feature evolution of “${item.layer}”`),
        el("p", "muted representation-note",
          "Zeiler & Fergus (2014, Fig. 4): per channel, its strongest unit on the probe set at this snapshot: the " +
          "DeconvNet projection (top, grey = 0) and the input patch under its receptive field (bottom)."),
        grid,
      );
      evolution.append(box);
    }
  }

  function prepareFrames() {
    const frames = state.frames;
    const count = Math.max(0, ...frames.labels) + 1;
    state.byClass = Array.from({ length: count }, () => []);
    frames.labels.forEach((label, i) => state.byClass[label].push(i));
    const layer = state.index.layers.find((l) => l.name === frames.layer);
    const how = frames.width <= 2
      ? "its two units"
      : frames.projection === "pca"
        ? `its first two principal components (of ${frames.width} stored values), aligned frame to frame`
        : `an aligned UMAP embedding of its ${frames.width} stored values (far-apart distances are not meaningful)`;
    const wrong = frames.pred ? " A black ring marks a wrong prediction at that step." : "";
    scatterTitle.textContent = `Inside the network: layer “${frames.layer}”`;
    scatterNote.textContent = `Every probe point as layer “${frames.layer}” sees it: ${how}, z-scored per frame ` +
      `(axes fixed over all ${frames.steps.length} snapshots, as in the report). Colour and marker: true class.${wrong}` +
      (layer?.notes.length ? ` Stored values: ${layer.notes.join("; ")}.` : "");
  }

  function drawScatter(step) {
    const frames = state.frames;
    const f = atOrBefore(frames.steps, step);
    const points = frames.points[f];
    const pred = frames.pred?.[f];
    const traces = state.byClass.map((indices, k) => ({
      type: "scatter",
      mode: "markers",
      name: escapeHtml(className(k)),
      x: indices.map((i) => points[i][0]),
      y: indices.map((i) => points[i][1]),
      customdata: indices,
      text: indices.map((i) => (pred ? `predicted ${escapeHtml(className(pred[i]))}` : "")),
      hovertemplate: `${escapeHtml(className(k))} · point %{customdata}<br>%{text}<extra></extra>`,
      marker: {
        color: state.index.class_colors[k] ?? "#6e7781",
        symbol: state.index.class_symbols[k] ?? "circle",
        size: 7,
        opacity: 0.85,
        line: { width: 0 },
      },
    })).filter((trace) => trace.x.length);
    let wrong = [];
    if (pred) {
      wrong = frames.labels.map((label, i) => (pred[i] !== label ? i : -1)).filter((i) => i >= 0);
      traces.push({
        type: "scatter",
        mode: "markers",
        name: "wrong prediction",
        x: wrong.map((i) => points[i][0]),
        y: wrong.map((i) => points[i][1]),
        marker: WRONG,
        hoverinfo: "skip",
      });
    }
    const accuracy = frames.accuracy?.[f];
    plot(scatter, traces, {
      title: {
        text: `step ${frames.steps[f]}${accuracy !== undefined && accuracy !== null ? ` · accuracy ${pct(accuracy)}` : ""}`,
        font: { size: 14 },
      },
      xaxis: { title: { text: frames.axis_names[0] }, range: frames.limits.x, zeroline: false },
      yaxis: { title: { text: frames.axis_names[1] }, range: frames.limits.y, zeroline: false },
      legend: { orientation: "h", y: -0.16 },
      showlegend: true,
      uirevision: `${frames.layer}|${frames.projection}`,
      margin: { l: 60, r: 20, t: 40, b: 90 },
    });
    Object.assign(scatter.dataset, { step: String(frames.steps[f]), frame: String(f), wrong: String(wrong.length) });
  }

  async function drawDecision(step, seq) {
    const info = state.index.decision;
    const shown = info.steps[atOrBefore(info.steps, step)];
    if (!state.decisions.has(shown)) state.decisions.set(shown, await api("representation/decision", { run: ctx.run, step: shown }));
    if (seq !== state.seq) return;
    const map = state.decisions.get(shown);
    const bins = map.colors.length;
    const colorscale = map.colors.flatMap((color, i) => [[i / bins, color], [(i + 1) / bins, color]]);
    const positive = escapeHtml(map.positive);
    const traces = [
      {
        type: "heatmap", x: map.x, y: map.y, z: map.scores, zmin: 0, zmax: 1, zsmooth: "best", colorscale,
        colorbar: { title: { text: `P(${positive})`, side: "right" }, thickness: 14, len: 0.8 },
        hovertemplate: `x₁ %{x:.2f}, x₂ %{y:.2f}<br>P(${positive}) %{z:.3f}<extra></extra>`,
      },
      {
        type: "contour", x: map.x, y: map.y, z: map.scores, showscale: false, hoverinfo: "skip",
        contours: { start: 0.5, end: 0.5, size: 1, coloring: "none" }, line: { color: "#000", width: 2 },
        name: "P = 0.5", showlegend: false,
      },
    ];
    const byClass = new Map();
    info.labels.forEach((label, i) => {
      if (!byClass.has(label)) byClass.set(label, []);
      byClass.get(label).push(info.points[i]);
    });
    for (const [k, pts] of [...byClass].sort((a, b) => a[0] - b[0])) {
      traces.push({
        type: "scatter", mode: "markers", name: escapeHtml(className(k)),
        x: pts.map((p) => p[0]), y: pts.map((p) => p[1]), hoverinfo: "skip",
        marker: {
          color: state.index.class_colors[k], symbol: state.index.class_symbols[k], size: 5,
          line: { width: 0.5, color: "#000" },
        },
      });
    }
    const [x0, x1, y0, y1] = map.extent;
    plot(decision, traces, {
      title: { text: `step ${map.step}`, font: { size: 14 } },
      xaxis: { title: { text: "x₁" }, range: [x0, x1], constrain: "domain" },
      yaxis: { title: { text: "x₂" }, range: [y0, y1], scaleanchor: "x", constrain: "domain" },
      legend: { orientation: "h", y: -0.16 },
      uirevision: "decision",
      margin: { l: 60, r: 20, t: 40, b: 90 },
    });
    decision.dataset.step = String(map.step);
    decisionNote.textContent = `Colour: the network's probability of “${map.positive}” on a grid over the inputs; ` +
      "the black line is the 0.5 contour, the decision boundary. Points keep their true-class colour and marker.";
  }

  async function drawEvolution(item, step, seq) {
    const shown = item.steps[atOrBefore(item.steps, step)];
    const key = `${item.layer}\u0000${shown}`;
    if (!state.evolutions.has(key)) {
      state.evolutions.set(key, await api("representation/evolution", { run: ctx.run, layer: item.layer, step: shown }));
    }
    if (seq !== state.seq) return;
    const answer = state.evolutions.get(key);
    const box = [...evolution.children].find((node) => node.dataset.layer === item.layer);
    const grid = box.querySelector(".representation-tiles");
    grid.replaceChildren(...answer.tiles.map((tile) => {
      const figure = el("figure", "representation-tile");
      figure.dataset.channel = String(tile.channel);
      const source = tile.image === null ? "" : `image #${tile.image}${tile.label === null ? "" : ` · “${className(tile.label)}”`}`;
      figure.append(
        image(tile.projection, `DeconvNet projection of channel ${tile.channel}`, "representation-img"),
        image(tile.patch, `input patch of channel ${tile.channel}`, "representation-img"),
        el("figcaption", null, `ch ${tile.channel} · ${fmt(tile.score, 3)}`),
        el("figcaption", "representation-source", source),
      );
      return figure;
    }));
    grid.dataset.step = String(answer.step);
  }

  async function show(position) {
    const seq = ++state.seq;
    state.position = Math.max(0, Math.min(position, state.steps.length - 1));
    const step = state.steps[state.position];
    slider.value = String(state.position);
    stepOut.textContent = step === undefined ? "—" : String(step);
    root.dataset.step = String(step);
    const acc = state.index.accuracy;
    if (acc && acc.steps.length && step !== undefined) {
      const a = atOrBefore(acc.steps, step);
      const balanced = acc.balanced ? ` · balanced ${pct(acc.balanced[a])}` : "";
      const baseline = state.index.majority_baseline === null ? "" : ` · majority baseline ${pct(state.index.majority_baseline)}`;
      readout.textContent = `Probe accuracy at step ${acc.steps[a]}: ${pct(acc.values[a])}${balanced}${baseline}`;
      readout.dataset.value = String(acc.values[a]);
    } else {
      readout.textContent = "";
    }
    if (step === undefined) return;
    if (state.frames) drawScatter(step);
    const pending = [];
    if (state.index.decision) pending.push(drawDecision(step, seq));
    for (const item of state.index.evolution) pending.push(drawEvolution(item, step, seq));
    await Promise.all(pending);
  }

  async function loadFrames() {
    const seq = ++state.seq;
    const step = state.steps[state.position];
    const atEnd = state.steps.length === 0 || state.position === state.steps.length - 1;
    state.frames = null;
    if (state.layer !== null) {
      const frames = await api("representation/frames", { run: ctx.run, layer: state.layer, projection: state.projection });
      if (seq !== state.seq) return;
      state.frames = frames;
      prepareFrames();
    }
    buildControls();
    state.steps = unionSteps();
    slider.max = String(Math.max(0, state.steps.length - 1));
    const position = atEnd || step === undefined ? state.steps.length - 1 : atOrBefore(state.steps, step);
    await show(position);
  }

  async function load() {
    state.index = await api("representation/index", { run: ctx.run });
    const names = state.index.layers.map((l) => l.name);
    if (!names.includes(state.layer)) state.layer = names[0] ?? null;
    if (!state.index.projections.includes(state.projection)) state.projection = "pca";
    state.decisions.clear();
    state.evolutions.clear();
    buildViews();
    await loadFrames();
  }

  function stop() {
    state.playing = false;
    clearTimeout(state.timer);
    play.textContent = "▶ Play";
    play.setAttribute("aria-pressed", "false");
  }

  async function tick() {
    if (!state.playing) return;
    if (state.position >= state.steps.length - 1) return stop();
    await show(state.position + 1);
    if (state.playing) state.timer = setTimeout(() => tick().catch(ctx.fail), PLAY_MS);
  }

  play.addEventListener("click", () => {
    if (state.playing) return stop();
    state.playing = true;
    play.textContent = "❚❚ Pause";
    play.setAttribute("aria-pressed", "true");
    if (state.position >= state.steps.length - 1) show(0).then(() => { state.timer = setTimeout(() => tick().catch(ctx.fail), PLAY_MS); }, ctx.fail);
    else tick().catch(ctx.fail);
  });
  slider.addEventListener("input", () => {
    stop();
    show(Number(slider.value)).catch(ctx.fail);
  });

  await load();
  return { refresh: load, destroy: stop };
}
