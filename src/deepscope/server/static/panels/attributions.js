// Attributions: one method's maps over every input (method switcher), every method on one input with a
// hoverable heat map, the faithfulness table ranked "which map to trust", the sanity-check curves, and
// token attributions of text runs. User strings (captions, methods, layers, tokens) enter as textContent,
// or escaped in Plotly labels.
import { COLORS, api, chart, el, escapeHtml, fmt, image, plot, select } from "../ui.js";

const PAGE = 32; // inputs per gallery page
const SYMBOLS = ["circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "star"];

// Plotly renders a subset of HTML in labels, titles and hover text: user strings go through this first.
const clip = (text, n = 40) => (String(text).length > n ? `${String(text).slice(0, n - 1)}…` : String(text));

// Only the latest request of each kind draws: ticket(kind) returns a check that a later call invalidates.
const tickets = new Map();
function ticket(kind) {
  const n = (tickets.get(kind) ?? 0) + 1;
  tickets.set(kind, n);
  return () => tickets.get(kind) === n;
}

const pretty = (name) => String(name).replace(/_/g, " ");

function scoreText(key, value, label) {
  if (key === "pointing_game" && value !== null) return `${label} ${value >= 0.5 ? "hit" : "miss"}`;
  return `${label} ${fmt(value, 3)}`;
}

function section(id, title) {
  const node = el("section", "attributions-section");
  node.id = id;
  const heading = el("h3", null, title);
  node.append(heading);
  return { node, heading };
}

// A horizontal colour bar for the maps: the server's colour stops as a CSS gradient (no user strings).
function legend(answer) {
  const wrap = el("div", "attributions-legend");
  wrap.dataset.signed = String(answer.signed);
  const bar = el("span", "attributions-bar");
  const stops = answer.colorscale.map(([t, colour]) => `${colour} ${(100 * t).toFixed(0)}%`);
  bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  const [low, high] = answer.signed ? ["−1", "+1"] : ["0", "1"];
  const text = answer.signed
    ? "signed map: blue against the class, red for it; scaled by the 99th percentile of |map|, transparent at 0"
    : "magnitude map, scaled to [0, 1] per image";
  wrap.append(el("span", "attributions-tick", low), bar, el("span", "attributions-tick", high), el("span", "muted", text));
  return wrap;
}

export async function render(container, ctx) {
  const state = {
    method: ctx.remember("method"),
    example: ctx.remember("example") ?? 0,
    measure: ctx.remember("measure"),
    start: 0,
    index: null,
  };
  const root = el("div", "attributions");
  root.dataset.run = ctx.run;
  container.append(root);

  const controls = el("div", "controls attributions-controls");
  const notes = el("div", "attributions-notes");
  const gallery = section("attributions-gallery-section", "Maps");
  const galleryLegend = el("div");
  const galleryGrid = el("div", "attributions-gallery");
  galleryGrid.id = "attributions-gallery";
  const pager = el("div", "attributions-pager");
  gallery.node.append(el("p", "muted", "Click an input to compare every method on it."), galleryLegend, galleryGrid, pager);

  const compare = section("attributions-compare-section", "Every method on one input");
  const compareGrid = el("div", "attributions-compare");
  compareGrid.id = "attributions-compare";
  const mapChart = chart(380, "chart attributions-map");
  mapChart.id = "attributions-map";
  const compareRow = el("div", "attributions-compare-row");
  compareRow.append(compareGrid, mapChart);
  compare.node.append(el("p", "muted", "Click a map to switch the method; hover the heat map for its values."), compareRow);

  const scores = section("attributions-scores-section", "Scores: which map to trust");
  const scoresTable = el("div", "attributions-scores");
  const scoresHelp = el("p", "muted");
  scores.node.append(scoresTable, scoresHelp);

  const sanity = section("attributions-sanity-section", "Sanity check: does the map depend on the weights?");
  const sanityControls = el("div", "controls");
  const sanityChart = chart(420, "chart attributions-sanity");
  sanityChart.id = "attributions-sanity";
  const sanityHelp = el("p", "muted");
  sanity.node.append(sanityControls, sanityChart, sanityHelp);

  const text = section("attributions-text-section", "Token attributions");
  const textBody = el("div", "attributions-texts");
  text.node.append(
    el("p", "muted", "Red tokens push the explained class up, blue ones down; the shade is relative to each text's largest score. Hover a token for its score."),
    textBody,
  );

  function methodNames() {
    return state.index.methods.map((m) => m.name);
  }

  function setMethod(method) {
    if (method === state.method || !methodNames().includes(method)) return;
    state.method = method;
    ctx.remember("method", method);
    const node = controls.querySelector("select");
    if (node) node.value = method;
    markCurrent();
    Promise.all([drawGallery(), drawCompare()]).catch(ctx.fail);
  }

  function setExample(index) {
    state.example = index;
    ctx.remember("example", index);
    for (const fig of galleryGrid.querySelectorAll("figure")) fig.classList.toggle("attributions-selected", Number(fig.dataset.index) === index);
    drawCompare().catch(ctx.fail);
  }

  function markCurrent() {
    for (const row of scoresTable.querySelectorAll("tr[data-method]")) row.classList.toggle("attributions-current", row.dataset.method === state.method);
    for (const tile of compareGrid.querySelectorAll("[data-method]")) tile.classList.toggle("attributions-current", tile.dataset.method === state.method);
    root.dataset.method = state.method ?? "";
  }

  function drawControls() {
    const options = state.index.methods.map((m) => [m.name, `${pretty(m.name)}${m.signed ? " (signed)" : ""}`]);
    const picker = select(options, state.method, setMethod, "Method");
    picker.querySelector("select").id = "attributions-method";
    const steps = el("span", "attributions-steps");
    for (const [label, delta] of [["‹ previous", -1], ["next ›", 1]]) {
      const button = el("button", "attributions-step", label);
      button.type = "button";
      button.dataset.step = String(delta);
      button.addEventListener("click", () => {
        const names = methodNames();
        setMethod(names[(names.indexOf(state.method) + delta + names.length) % names.length]);
      });
      steps.append(button);
    }
    controls.replaceChildren(picker, steps);
  }

  async function drawGallery() {
    const current = ticket("gallery");
    const answer = await api("attributions/gallery", { run: ctx.run, method: state.method, start: state.start, count: PAGE });
    if (!current()) return;
    gallery.heading.textContent = `Maps · ${pretty(answer.method)}`;
    galleryLegend.replaceChildren(legend(answer));
    galleryGrid.dataset.method = answer.method;
    galleryGrid.replaceChildren(...answer.examples.map((example) => {
      const fig = el("figure", "attributions-example");
      fig.dataset.index = String(example.index);
      fig.tabIndex = 0;
      fig.classList.toggle("attributions-selected", example.index === state.example);
      const pair = el("div", "attributions-pair");
      pair.append(image(example.image, `input ${example.index}`, "attributions-img"), image(example.overlay, `${answer.method} map of input ${example.index}`, "attributions-img"));
      const caption = el("figcaption");
      caption.append(el("span", "attributions-caption", example.caption));
      if (example.target !== null) caption.append(el("span", "attributions-target", ` · target ${example.target}`));
      const list = el("div", "attributions-example-scores");
      for (const [key, value] of Object.entries(example.scores)) {
        const item = el("span", "attributions-score", scoreText(key, value, answer.labels[key]));
        item.dataset.metric = key;
        item.dataset.value = value === null ? "" : String(value);
        list.append(item);
      }
      caption.append(list);
      fig.append(pair, caption);
      const choose = () => setExample(example.index);
      fig.addEventListener("click", choose);
      fig.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") choose(); });
      return fig;
    }));
    pager.replaceChildren();
    if (answer.total > PAGE) {
      const last = Math.min(answer.total, answer.start + PAGE);
      const prev = el("button", null, "‹ earlier");
      const next = el("button", null, "later ›");
      prev.disabled = answer.start === 0;
      next.disabled = last >= answer.total;
      prev.addEventListener("click", () => { state.start = Math.max(0, state.start - PAGE); drawGallery().catch(ctx.fail); });
      next.addEventListener("click", () => { state.start += PAGE; drawGallery().catch(ctx.fail); });
      pager.append(prev, el("span", "muted", `inputs ${answer.start + 1}–${last} of ${answer.total}`), next);
    }
  }

  async function drawCompare() {
    const current = ticket("example");
    const answer = await api("attributions/example", { run: ctx.run, index: state.example, method: state.method });
    if (!current()) return;
    const named = answer.caption !== `input ${answer.index}`;
    compare.heading.textContent = `Every method on input ${answer.index}${named ? `: ${answer.caption}` : ""}`;
    compareGrid.dataset.index = String(answer.index);
    const input = el("figure", "attributions-tile attributions-input");
    input.append(image(answer.image, `input ${answer.index}`, "attributions-img"), el("figcaption", null, "input"));
    compareGrid.replaceChildren(input, ...answer.methods.map((row) => {
      const tile = el("button", "attributions-tile");
      tile.type = "button";
      tile.dataset.method = row.method;
      tile.title = `${row.method}${row.signed ? " (signed)" : ""}`;
      tile.append(image(row.overlay, `${row.method} map`, "attributions-img"), el("span", "attributions-tile-name", pretty(row.method)), el("span", "attributions-tile-note", row.note || "\u00a0"));
      tile.addEventListener("click", () => setMethod(row.method));
      return tile;
    }));
    const heat = answer.map;
    plot(mapChart, [{
      type: "heatmap", z: heat.z, zmin: heat.zmin, zmax: heat.zmax, colorscale: heat.colorscale,
      colorbar: { title: { text: heat.signed ? "signed, scaled" : "scaled" }, thickness: 12 },
      hovertemplate: "x %{x}, y %{y}<br>map %{z:.3f}<extra></extra>",
    }], {
      title: { text: escapeHtml(clip(`${pretty(heat.method)} · ${answer.caption}`)), font: { size: 13 } },
      xaxis: { title: { text: "x (pixels)" }, constrain: "domain" },
      yaxis: { title: { text: "y (pixels)" }, autorange: "reversed", scaleanchor: "x" },
      margin: { l: 50, r: 10, t: 36, b: 40 },
    });
    mapChart.dataset.method = heat.method;
    mapChart.dataset.index = String(answer.index);
    markCurrent();
  }

  async function drawScores() {
    const current = ticket("scores");
    const answer = await api("attributions/scores", { run: ctx.run });
    if (!current()) return;
    const node = el("table", "data attributions-table");
    node.id = "attributions-scores";
    const head = el("tr");
    for (const label of ["rank", "method", ...answer.columns.map((c) => c.label + (c.better ? (c.better === "lower" ? " ↓" : " ↑") : ""))]) head.append(el("th", null, label));
    answer.columns.forEach((c, i) => { if (c.help) head.children[i + 2].title = c.help; });
    node.append(head);
    const rows = [...answer.rows].sort((a, b) => a.rank - b.rank);
    for (const row of rows) {
      const tr = el("tr");
      tr.dataset.method = row.method;
      tr.dataset.rank = String(row.rank);
      tr.append(el("td", null, String(row.rank)), el("td", "attributions-method-cell", pretty(row.method)));
      for (const c of answer.columns) {
        const value = row[c.key];
        const td = el("td", null, typeof value === "number" ? fmt(value, 3) : (value ?? "—"));
        td.dataset.key = c.key;
        tr.append(td);
      }
      tr.addEventListener("click", () => setMethod(row.method));
      node.append(tr);
    }
    scoresTable.replaceChildren(node);
    const ranked = answer.columns.some((c) => ["deletion_auc", "insertion_auc", "pointing_game", "energy_in_mask"].includes(c.key));
    scoresHelp.textContent = `${answer.help} ${ranked ? "Rank: mean rank over these metrics (↓ lower is better, ↑ higher); a failed sanity check ranks last." : "Rank: a failed sanity check ranks last."} Click a row to show its maps.`;
    markCurrent();
  }

  async function drawSanity() {
    const current = ticket("sanity");
    const answer = await api("attributions/sanity", { run: ctx.run });
    if (!current()) return;
    if (!answer.measures.includes(state.measure)) state.measure = answer.measures.includes(answer.measure) ? answer.measure : answer.measures[0];
    const picker = select(answer.measures, state.measure, (measure) => {
      state.measure = measure;
      ctx.remember("measure", measure);
      drawSanity().catch(ctx.fail);
    }, "Similarity");
    picker.querySelector("select").id = "attributions-measure";
    sanityControls.replaceChildren(picker);
    const layers = answer.curves[0]?.x ?? [];
    const traces = answer.curves.filter((c) => c.values[state.measure]).map((curve, i) => ({
      type: "scatter", mode: "lines+markers",
      name: `${escapeHtml(pretty(curve.method))} (${curve.passed ? "passes" : "fails"})`,
      x: curve.values[state.measure].map((_, j) => j), y: curve.values[state.measure],
      customdata: curve.per_input[state.measure].map((values, j) => [escapeHtml(curve.x[j] ?? ""), values.map((v) => fmt(v, 2)).join(", ")]),
      line: { color: COLORS[i % COLORS.length], width: 2 },
      marker: { symbol: SYMBOLS[i % SYMBOLS.length], size: 8 },
      hovertemplate: "%{customdata[0]}<br>mean %{y:.3f}<br>per input: %{customdata[1]}<extra>%{fullData.name}</extra>",
    }));
    const verdict = state.measure === answer.measure && answer.threshold !== null;
    plot(sanityChart, traces, {
      title: { text: `${escapeHtml(state.measure)} similarity to the intact model's map`, font: { size: 13 } },
      xaxis: { title: { text: "layers randomised, from the output down" }, zeroline: false, tickvals: layers.map((_, j) => j), ticktext: layers.map(escapeHtml) },
      yaxis: { title: { text: `${escapeHtml(state.measure)} similarity` }, range: [Math.min(-0.1, ...traces.flatMap((t) => t.y.filter((v) => v !== null))) - 0.05, 1.05] },
      shapes: verdict ? [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: answer.threshold, y1: answer.threshold, line: { dash: "dash", color: "#6e7781", width: 1 } }] : [],
      annotations: verdict ? [{ xref: "paper", x: 0.01, y: answer.threshold, yanchor: "bottom", xanchor: "left", showarrow: false, text: `verdict threshold ${answer.threshold}`, font: { size: 11, color: "#57606a" } }] : [],
      legend: { orientation: "h", y: -0.3 },
      margin: { l: 60, r: 20, t: 36, b: 110 },
    });
    sanityChart.dataset.measure = state.measure;
    sanityHelp.textContent = `The verdict uses ${answer.measure}${answer.threshold !== null ? ` below ${answer.threshold} once every layer is randomised` : ""}: ${answer.help}.`;
  }

  async function drawText() {
    const current = ticket("text");
    const answer = await api("attributions/text", { run: ctx.run });
    if (!current()) return;
    text.heading.textContent = `Token attributions · ${pretty(answer.method)}`;
    text.node.dataset.method = answer.method;
    textBody.replaceChildren(...answer.texts.map((item) => {
      const line = el("p", "attributions-text");
      line.dataset.index = String(item.index);
      line.append(el("small", "attributions-text-caption", item.caption), el("br"));
      for (const token of item.tokens) {
        if (!token.joined) line.append(document.createTextNode(" "));
        const span = el("span", "attributions-token", token.text);
        span.style.backgroundColor = token.background;
        span.title = token.score === null ? "no score" : `${token.score > 0 ? "+" : ""}${token.score.toFixed(4)}`;
        span.dataset.score = token.score === null ? "" : String(token.score);
        line.append(span);
      }
      return line;
    }));
  }

  async function load() {
    const current = ticket("index");
    const index = await api("attributions/index", { run: ctx.run });
    if (!current()) return;
    state.index = index;
    const names = methodNames();
    if (!names.includes(state.method)) state.method = names[0] ?? null;
    if (!(state.example >= 0 && state.example < index.examples)) state.example = 0;
    if (state.start >= index.examples) state.start = 0;
    notes.replaceChildren(...index.notes.map((note) => el("p", "muted attributions-note", note)));
    const shown = [];
    if (names.length) {
      drawControls();
      shown.push(controls, notes, gallery.node, compare.node, scores.node);
      if (index.sanity) shown.push(sanity.node);
    }
    if (index.text) shown.push(text.node);
    if (shown.length !== root.children.length || shown.some((node, i) => root.children[i] !== node)) root.replaceChildren(...shown);
    const work = [];
    if (names.length) work.push(drawGallery(), drawCompare(), drawScores());
    if (index.sanity) work.push(drawSanity());
    if (index.text) work.push(drawText());
    await Promise.all(work);
    markCurrent();
  }

  await load();
  return {
    refresh: load,
    destroy: () => { for (const node of [mapChart, sanityChart]) if (window.Plotly) Plotly.purge(node); },
  };
}
