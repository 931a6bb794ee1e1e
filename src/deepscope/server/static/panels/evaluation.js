// Evaluation: the summary line, the confusion matrix (click a cell for its examples), per-class metrics,
// the reliability diagram, per-group metrics and the spurious-cue audit of one evaluation run.
import { api, chart, el, escapeHtml, image, plot, select, table } from "../ui.js";

const MAGMA = [[0, "#000004"], [0.13, "#1c1044"], [0.25, "#4f127b"], [0.38, "#812581"], [0.5, "#b5367a"],
  [0.63, "#e55964"], [0.75, "#fb8761"], [0.88, "#fec287"], [1, "#fcfdbf"]];
const BLUE = "#0072B2"; // Okabe–Ito, as the report's figures
const VERMILLION = "#D55E00";
const MODES = [["counts", "Counts"], ["rates", "Share of the true class (row-normalised)"]];
const SOURCES = { gallery: "error gallery", audit: "cue audit" };

// Plotly renders a subset of HTML in labels and hover text: user strings go in escaped.
// Axis labels are cut to 24 characters (the hover text and the tables give the whole name).
const short = (name) => (name.length > 24 ? `${name.slice(0, 23)}…` : name);
// Three decimals, as the report's tables (deepscope._format.cell).
const dec = (value) => (value === null || value === undefined ? "—" : Number(value).toFixed(3));
// A probability: three decimals, or two significant digits below 0.001 (a confident mistake's p(true)).
const prob = (value) => (value !== null && value !== undefined && value > 0 && value < 0.001 ? Number(value).toExponential(1) : dec(value));

// Where an example comes from: a cell's own (its highest losses: on the diagonal, the least confident), or a gallery.
const source = (example) => (example.source === "cells"
  ? (example.true === example.pred ? "least confident" : "highest loss")
  : SOURCES[example.source] ?? example.source);

function section(id, title) {
  const node = el("section", "evaluation-section");
  node.id = id;
  if (title) node.append(el("h3", null, title));
  return node;
}

// One kept example: its input and Grad-CAM (when images and stored) and what the model made of it.
function exampleFigure(example, classes) {
  const figure = el("figure", "evaluation-example");
  figure.dataset.index = String(example.index);
  figure.dataset.source = example.source;
  const pictures = el("div", "evaluation-pictures");
  if (example.image) pictures.append(image(example.image, `input #${example.index}`, "evaluation-thumb"));
  if (example.map) pictures.append(image(example.map, `Grad-CAM of #${example.index}`, "evaluation-thumb"));
  const caption = el("figcaption");
  const name = (k) => (k === null || k === undefined ? "?" : classes[k] ?? String(k));
  caption.append(
    el("span", "evaluation-caption-head", `#${example.index} · ${source(example)}`),
    el("span", null, `true: ${name(example.true)}`),
    el("span", null, `predicted: ${name(example.pred)}`),
  );
  if (example.confidence === null) caption.append(el("span", null, "confidence not stored"));
  else caption.append(el("span", null, `p(pred) ${prob(example.confidence)}`), el("span", null, `p(true) ${prob(example.true_probability)}`));
  if (example.loss !== null && example.loss !== undefined) caption.append(el("span", null, `loss ${dec(example.loss)}`));
  figure.append(pictures, caption);
  return figure;
}

export async function render(container, ctx) {
  const state = { mode: ctx.remember("mode") ?? "counts", cell: null, cellSeq: 0, seq: 0 };
  const summaryBox = section("evaluation-summary");
  const confusionBox = section("evaluation-confusion-section", "Confusion matrix");
  const heatmap = chart(460);
  heatmap.id = "evaluation-confusion";
  const cellBox = el("div", "card evaluation-cell");
  cellBox.id = "evaluation-cell";
  const pairs = el("div", "evaluation-pairs");
  const grid = el("div", "evaluation-grid");
  const left = el("div");
  left.append(heatmap, pairs);
  grid.append(left, cellBox);
  const modeSelect = select(MODES, state.mode, (mode) => {
    state.mode = mode;
    ctx.remember("mode", mode);
    drawConfusion();
  }, "Show");
  modeSelect.querySelector("select").id = "evaluation-mode";
  const controls = el("div", "controls");
  controls.append(modeSelect, el("span", "muted", "Click a cell to see its examples."));
  confusionBox.append(controls, grid);
  const classesBox = section("evaluation-classes", "Per-class metrics");
  const calibrationBox = section("evaluation-calibration-section", "Calibration");
  const reliability = chart(420);
  reliability.id = "evaluation-calibration";
  const calibrationText = el("p", "muted");
  calibrationBox.append(reliability, calibrationText);
  const groupsBox = section("evaluation-groups", "Groups");
  const auditBox = section("evaluation-audit", "Spurious-cue audit");
  container.append(summaryBox, confusionBox, classesBox, calibrationBox, groupsBox, auditBox);

  function drawSummary(s) {
    const chips = el("div", "evaluation-metrics");
    for (const metric of s.metrics) {
      const chip = el("div", "evaluation-metric");
      chip.dataset.key = metric.key;
      chip.append(el("span", "evaluation-metric-label", metric.label), el("span", "evaluation-metric-value", metric.text));
      chips.append(chip);
    }
    const examples = el("div", "evaluation-metric");
    examples.dataset.key = "examples";
    examples.append(el("span", "evaluation-metric-label", "Examples"), el("span", "evaluation-metric-value", s.examples));
    chips.append(examples);
    summaryBox.replaceChildren(chips, ...s.text.map((text, i) => el("p", i ? "evaluation-warning" : "muted", text)));
    summaryBox.dataset.belowBaseline = String(s.below_baseline);
  }

  function drawConfusion() {
    const c = state.confusion;
    if (!c) return;
    const shown = c.shown;
    const counts = state.mode === "counts";
    const stored = new Map(c.stored.map(([t, p, n]) => [`${t},${p}`, n]));
    const labels = shown.map((k) => escapeHtml(c.classes[k]));
    const ticks = shown.map((k) => escapeHtml(short(String(c.classes[k]))));
    const axis = { tickvals: shown.map((_, k) => k), ticktext: ticks, showgrid: false, zeroline: false };
    const trace = {
      type: "heatmap",
      x: axis.tickvals,
      y: axis.tickvals,
      z: shown.map((i) => shown.map((j) => (counts ? c.counts[i][j] : c.rates[i][j]))),
      customdata: shown.map((i) => shown.map((j) => [
        labels[shown.indexOf(i)], labels[shown.indexOf(j)], c.counts[i][j], dec(c.rates[i][j]), stored.get(`${i},${j}`) ?? 0,
      ])),
      colorscale: counts ? MAGMA : "Viridis",
      zmin: 0,
      zmax: counts ? Math.max(1, ...shown.map((i) => Math.max(...shown.map((j) => c.counts[i][j])))) : 1,
      xgap: 1,
      ygap: 1,
      colorbar: { title: { text: counts ? "examples" : "share" }, thickness: 14 },
      hovertemplate: "true %{customdata[0]}<br>predicted %{customdata[1]}<br>%{customdata[2]} examples "
        + "(%{customdata[3]} of the true class)<br>%{customdata[4]} kept to show<extra></extra>",
    };
    if (shown.length <= 12) trace.texttemplate = counts ? "%{z}" : "%{z:.2f}";
    const shapes = [];
    if (state.cell && shown.includes(state.cell[0]) && shown.includes(state.cell[1])) {
      const [x, y] = [shown.indexOf(state.cell[1]), shown.indexOf(state.cell[0])];
      shapes.push({ type: "rect", x0: x - 0.5, x1: x + 0.5, y0: y - 0.5, y1: y + 0.5, line: { color: "#0969da", width: 3 } });
    }
    const longest = Math.max(4, ...shown.map((k) => short(String(c.classes[k])).length));
    const note = shown.length < c.classes.length ? ` — the ${shown.length} classes of the most confused pairs, of ${c.classes.length}` : "";
    plot(heatmap, [trace], {
      title: { text: `${counts ? "Counts" : "Share of the true class"} · ${c.correct} of ${c.total} right${note}`, font: { size: 13 } },
      xaxis: { ...axis, title: { text: "predicted class" }, tickangle: shown.length > 6 ? -60 : 0 },
      yaxis: { ...axis, title: { text: "true class" }, autorange: "reversed" },
      margin: { l: 50 + 7 * longest, r: 20, t: 40, b: 60 + (shown.length > 6 ? 5 * longest : 0) },
      shapes,
    });
    heatmap.dataset.mode = state.mode;
    heatmap.dataset.classes = String(shown.length);
  }

  function drawPairs() {
    const c = state.confusion;
    pairs.replaceChildren();
    if (!c.confused.length) {
      pairs.append(el("p", "muted", "No example is misclassified."));
      return;
    }
    pairs.append(el("span", "muted", "Most confused: "));
    for (const pair of c.confused) {
      const button = el("button", "evaluation-pair", `${c.classes[pair.true]} → ${c.classes[pair.pred]} (${pair.count})`);
      button.type = "button";
      button.dataset.true = String(pair.true);
      button.dataset.pred = String(pair.pred);
      button.title = `${dec(pair.rate)} of the true class`;
      button.addEventListener("click", () => openCell(pair.true, pair.pred).catch(ctx.fail));
      pairs.append(button);
    }
  }

  function drawCell(answer) {
    const classes = state.confusion.classes;
    const title = el("h4", "evaluation-cell-title", `true ${answer.true_name} → predicted ${answer.pred_name}`);
    const stats = el("p", "evaluation-cell-count", `${answer.count} example${answer.count === 1 ? "" : "s"} · ${answer.shown} shown`);
    const note = el("p", "evaluation-note", answer.note);
    const gallery = el("div", "gallery evaluation-examples");
    for (const example of answer.examples) gallery.append(exampleFigure(example, classes));
    cellBox.replaceChildren(title, stats, note);
    const mapped = answer.examples.filter((example) => example.map).length;
    if (mapped) {
      cellBox.append(el("p", "muted evaluation-legend", mapped === answer.examples.length
        ? "Each example: its input, then the Grad-CAM of the predicted class over it."
        : "Each example: its input; those of the error gallery and the cue audit also the Grad-CAM of the predicted class over it."));
    }
    cellBox.append(gallery);
    if (answer.positions && answer.positions.length && answer.shown < answer.count) {
      const details = el("details", "evaluation-positions");
      const known = answer.positions_complete
        ? `all ${answer.count}`
        : `${answer.positions.length} of them, from the 2-D map's sample of ${answer.sample.size} of ${answer.sample.of} examples`;
      details.append(el("summary", null, `Positions in the data (${known})`), el("p", null, answer.positions.join(", ")));
      cellBox.append(details);
    }
    Object.assign(cellBox.dataset, {
      true: String(answer.true), pred: String(answer.pred), count: String(answer.count), shown: String(answer.shown),
      kept: answer.kept === null || answer.kept === undefined ? "" : String(answer.kept), state: "ready",
    });
  }

  async function openCell(t, p) {
    const seq = ++state.cellSeq;
    state.cell = [t, p];
    cellBox.dataset.state = "loading";
    drawConfusion();
    const answer = await api("evaluation/cell", { run: ctx.run, true: t, pred: p });
    if (seq !== state.cellSeq) return;
    drawCell(answer);
  }

  function drawClasses(answer) {
    const header = ["class", "support", ...answer.metrics.map((m) => m.label)];
    const rows = answer.rows.map((row) => [row.class, row.support, ...answer.metrics.map((m) => row[m.key].text)]);
    const node = table([header, ...rows], "data evaluation-table");
    node.id = "evaluation-class-table";
    classesBox.replaceChildren(el("h3", null, "Per-class metrics"),
      el("p", "muted", `Each value with its ${Math.round(answer.level * 100)} % bootstrap interval [low, high]; recall is the sensitivity.`), node);
  }

  function drawCalibration(c) {
    const bins = c.centres.map((_, k) => [dec(c.edges[k]), dec(c.edges[k + 1]), c.counts[k], dec(c.confidence[k])]);
    plot(reliability, [
      {
        type: "bar", name: "accuracy in the bin", x: c.centres, y: c.accuracy, width: c.widths, customdata: bins,
        marker: { color: BLUE, line: { color: "#fff", width: 1 } },
        hovertemplate: "confidence %{customdata[0]}–%{customdata[1]}<br>accuracy %{y:.3f}<br>mean confidence "
          + "%{customdata[3]}<br>%{customdata[2]} examples<extra></extra>",
      },
      {
        type: "scatter", mode: "markers", name: "mean confidence", x: c.centres, y: c.confidence,
        marker: { symbol: "diamond", color: VERMILLION, size: 8 }, hovertemplate: "mean confidence %{y:.3f}<extra></extra>",
      },
      { type: "scatter", mode: "lines", name: "perfect calibration", x: [0, 1], y: [0, 1], line: { dash: "dash", color: "#333" }, hoverinfo: "skip" },
      {
        type: "bar", name: "examples", x: c.centres, y: c.counts, width: c.widths, yaxis: "y2", showlegend: false,
        marker: { color: "#999" }, hovertemplate: "%{y} examples<extra></extra>",
      },
    ], {
      title: { text: `Reliability diagram — ECE ${dec(c.ece)}, MCE ${dec(c.mce)}`, font: { size: 13 } },
      xaxis: { title: { text: "confidence (top-class probability)" }, range: [0, 1], anchor: "y2" },
      yaxis: { title: { text: "accuracy in the bin" }, range: [0, 1], domain: [0.3, 1] },
      yaxis2: { title: { text: "examples" }, domain: [0, 0.22], anchor: "x", rangemode: "tozero" },
      legend: { orientation: "h", y: 1.12 },
      barmode: "overlay",
      margin: { l: 60, r: 20, t: 70, b: 45 },
    });
    reliability.dataset.ece = String(c.ece);
    calibrationText.textContent = `${c.text} Bars reach the diagonal when calibrated: of the predictions made with confidence p, a share p is right.`;
  }

  function drawGroups(answer) {
    const main = table([
      ["group", "examples", "accuracy", "gap to best", "balanced accuracy", "gap to best"],
      ...answer.rows.map((r) => [r.group, r.examples, r.accuracy.text, dec(r.accuracy_gap), r.balanced_accuracy.text, dec(r.balanced_accuracy_gap)]),
    ], "data evaluation-table");
    main.id = "evaluation-group-table";
    const recall = table([
      ["group", ...answer.classes.map((name) => `recall ${name}`)],
      ...answer.rows.map((r) => [r.group, ...r.recall.map(dec)]),
    ], "data evaluation-table");
    recall.id = "evaluation-group-recall";
    groupsBox.replaceChildren(el("h3", null, "Groups"), el("p", "muted", answer.text), main,
      el("p", "muted", "Recall (sensitivity) of each class inside each group:"), recall);
  }

  function drawAudit(a) {
    const rows = table([
      ["class", "share inside the object", "object area", "flagged"],
      ...a.rows.map((r) => [r.class, r.share.text, dec(r.area), r.flagged ? "yes" : "no"]),
    ], "data evaluation-table");
    rows.id = "evaluation-audit-table";
    const parts = [el("h3", null, "Spurious-cue audit"), el("p", "evaluation-verdict", a.verdict), rows];
    if (a.groups.length) parts.push(el("p", "muted", `Per group: ${a.groups.map((g) => `${g.group} ${g.text}`).join("; ")}.`));
    parts.push(image(a.figure, "share of the attribution inside the object per class", "figure evaluation-figure"));
    if (a.examples.length) {
      const gallery = el("div", "gallery evaluation-examples");
      for (const example of a.examples) gallery.append(exampleFigure(example, state.confusion.classes));
      parts.push(el("p", "muted", "Flagged classes: the audited examples with the least attribution on the object."), gallery);
    }
    auditBox.replaceChildren(...parts);
    auditBox.dataset.flagged = String(a.flagged.length);
  }

  async function load() {
    const seq = ++state.seq;
    const run = ctx.run;
    const [summary, confusion, classes, calibration] = await Promise.all(
      ["summary", "confusion", "classes", "calibration"].map((route) => api(`evaluation/${route}`, { run })),
    );
    const [groups, audit] = await Promise.all([
      summary.sections.groups ? api("evaluation/groups", { run }) : null,
      summary.sections.audit ? api("evaluation/audit", { run }) : null,
    ]);
    if (seq !== state.seq) return;
    state.confusion = confusion;
    drawSummary(summary);
    drawClasses(classes);
    drawCalibration(calibration);
    groupsBox.hidden = !groups;
    if (groups) drawGroups(groups);
    auditBox.hidden = !audit;
    if (audit) drawAudit(audit);
    drawPairs();
    const k = confusion.counts.length;
    const keep = state.cell && state.cell[0] < k && state.cell[1] < k;
    const first = confusion.confused[0];
    const cell = keep ? state.cell : first ? [first.true, first.pred] : null;
    if (cell) await openCell(cell[0], cell[1]);
    else {
      drawConfusion();
      cellBox.replaceChildren(el("p", "muted", "Click a cell of the matrix to see its examples."));
    }
  }

  plot(heatmap, [], {});
  heatmap.on("plotly_click", (event) => {
    const point = event.points?.[0];
    if (!point || !state.confusion) return;
    const shown = state.confusion.shown;
    openCell(shown[point.y], shown[point.x]).catch(ctx.fail);
  });
  await load();
  return { refresh: () => load().catch(ctx.fail) };
}
