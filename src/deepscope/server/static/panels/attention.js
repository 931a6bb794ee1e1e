// Attention: one recorded example of a transformer. A head view (query tokens on the left joined to the key
// tokens on the right, one colour per head, line opacity = weight; hover a query token to see only its row,
// click to keep it), one head's query × key heat map, the attention rollout and each head's entropy.
// The head view follows the report's (deepscope/_attention_panel.py), rebuilt as DOM/SVG nodes: tokens enter
// as textContent, and every token or layer name put into a Plotly label is HTML-escaped first.
import { api, chart, el, escapeHtml, fmt, image, plot, select } from "../ui.js";

const NS = "http://www.w3.org/2000/svg";
const ROW = 22; // px between two tokens of a column
const TOP = 14;
const PAD = 8;
const GAP = 150; // px between the two token columns
const MIN_WEIGHT = 0.01; // lighter lines are not drawn (as in the report)
// matplotlib's magma (perceptually uniform, for magnitudes), which plotly.js does not ship
const MAGMA = [
  [0, "#000004"], [0.125, "#1d1147"], [0.25, "#51127c"], [0.375, "#832681"], [0.5, "#b73779"],
  [0.625, "#e75263"], [0.75, "#fc8961"], [0.875, "#fec488"], [1, "#fcfdbf"],
];

// Plotly draws a subset of HTML in labels, titles and hover text: user strings go in escaped.

const TICK_CHARS = 20; // longer tokens are shortened on the axes (hover shows them whole)
const short = (text) => (text.length > TICK_CHARS ? `${text.slice(0, TICK_CHARS - 1)}…` : text);

const headColor = (head, count) => `hsl(${Math.round((head * 360) / count)},75%,42%)`;

function tokenAxis(tokens, title) {
  return {
    title: { text: title },
    tickmode: "array",
    tickvals: tokens.map((_, i) => i),
    ticktext: tokens.map((token) => escapeHtml(short(token))),
    automargin: true,
    showgrid: false,
    zeroline: false,
  };
}

function card(title, id) {
  const node = el("section", "attention-card");
  node.id = id;
  node.append(el("h3", null, title));
  return node;
}

export async function render(container, ctx) {
  const state = {
    info: null,
    example: ctx.remember("example"),
    layer: ctx.remember("layer"),
    heads: ctx.remember("heads"), // ticked heads (head view)
    head: ctx.remember("head"), // the head of the heat map
    row: 0, // the rollout row shown (0: the first token)
    focus: null, // the query token the head view is restricted to
    pinned: false,
    layerData: null,
    rollout: null,
    entropy: null,
    seq: 0,
  };
  const root = el("div", "attention");
  root.id = "attention";
  const controls = el("div", "controls attention-controls");
  const headBoxes = el("div", "attention-heads");
  headBoxes.id = "attention-heads";
  const grid = el("div", "attention-grid");

  const viewCard = card("Head view", "attention-headview-card");
  const hint = el("p", "muted", "Each token on the left attends to the tokens on the right; darker lines carry more " +
    "weight. Hover a token on the left to see only its row; click it to keep that view.");
  const scroller = el("div", "attention-scroll");
  const svg = document.createElementNS(NS, "svg");
  svg.id = "attention-headview";
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "attention from query tokens (left) to key tokens (right)");
  const lines = document.createElementNS(NS, "g");
  scroller.append(svg);
  viewCard.append(hint, scroller);

  const matrixCard = card("One head", "attention-matrix-card");
  const headMenu = el("div", "controls");
  const matrixNode = chart(420);
  matrixNode.id = "attention-matrix";
  matrixCard.append(headMenu, matrixNode);

  const rolloutCard = card("Attention rollout", "attention-rollout-card");
  const rowMenu = el("div", "controls");
  const rolloutNode = chart(340);
  rolloutNode.id = "attention-rollout";
  rolloutCard.append(
    el("p", "muted", "Abnar & Zuidema (2020): heads averaged, 0.5·W + 0.5·I per layer, rows normalised, layers " +
      "multiplied. A row is what one token draws on from each input token through every layer."),
    rowMenu, rolloutNode,
  );

  const entropyCard = card("Entropy per head", "attention-entropy-card");
  const entropyNode = chart(300);
  entropyNode.id = "attention-entropy";
  entropyCard.append(
    el("p", "muted", "Mean entropy of each head's rows (nats): low, the head attends to a few tokens. " +
      "Click a cell to show that layer and head."),
    entropyNode,
  );

  const overview = el("details", "attention-overview");
  overview.id = "attention-model-view";
  overview.append(el("summary", null, "Every layer and head (the report's model view)"));
  overview.addEventListener("toggle", () => { if (overview.open) loadOverview().catch(ctx.fail); });

  grid.append(viewCard, matrixCard, rolloutCard, entropyCard);
  root.append(controls, headBoxes, grid, overview);
  container.append(root);

  const tokens = () => state.layerData?.tokens ?? [];
  const headCount = () => state.info.heads;

  // ---------------------------------------------------------------- controls
  function buildControls() {
    const { examples, layers } = state.info;
    const exampleMenu = select(
      examples.map((e) => [e.example, `#${e.example} · ${e.tokens} tokens · ${e.text}`]),
      state.example,
      (value) => { state.example = Number(value); ctx.remember("example", state.example); loadExample().catch(ctx.fail); },
      "Text",
    );
    exampleMenu.querySelector("select").id = "attention-example";
    exampleMenu.classList.add("attention-text");
    const layerMenu = select(layers.map((name, i) => [i, name]), state.layer, (value) => setLayer(Number(value)), "Layer");
    layerMenu.querySelector("select").id = "attention-layer";
    controls.replaceChildren(exampleMenu, layerMenu);

    headBoxes.replaceChildren(el("span", "attention-heads-label", "Heads"));
    for (let h = 0; h < headCount(); h += 1) {
      const label = el("label", "attention-head");
      const box = el("input");
      Object.assign(box, { type: "checkbox", id: `attention-head-${h}`, checked: state.heads.includes(h) });
      box.dataset.head = String(h);
      box.addEventListener("change", () => {
        state.heads = box.checked ? [...new Set([...state.heads, h])].sort((a, b) => a - b) : state.heads.filter((x) => x !== h);
        ctx.remember("heads", state.heads);
        drawHeadView();
      });
      const swatch = el("span", "attention-swatch");
      swatch.style.background = headColor(h, headCount());
      label.append(box, swatch, el("span", null, `head ${h}`));
      headBoxes.append(label);
    }
    for (const [text, pick] of [["all", () => [...Array(headCount()).keys()]], ["none", () => []]]) {
      const button = el("button", "attention-toggle", text);
      button.type = "button";
      button.dataset.heads = text;
      button.addEventListener("click", () => { state.heads = pick(); ctx.remember("heads", state.heads); syncBoxes(); drawHeadView(); });
      headBoxes.append(button);
    }
    const heatHead = select([...Array(headCount()).keys()].map((h) => [h, `head ${h}`]), state.head, (value) => {
      state.head = Number(value);
      ctx.remember("head", state.head);
      drawMatrix();
      drawEntropy();
    }, "Head");
    heatHead.querySelector("select").id = "attention-head";
    headMenu.replaceChildren(heatHead);
  }

  function syncBoxes() {
    headBoxes.querySelectorAll("input[type=checkbox]").forEach((box) => { box.checked = state.heads.includes(Number(box.dataset.head)); });
    controls.querySelector("#attention-layer").value = String(state.layer);
    headMenu.querySelector("#attention-head").value = String(state.head);
  }

  function buildRowMenu() {
    const menu = select(tokens().map((t, i) => [i, `${i} · ${t}`]), state.row, (value) => {
      state.row = Number(value);
      drawRollout();
    }, "Row of");
    menu.querySelector("select").id = "attention-rollout-row";
    rowMenu.replaceChildren(menu);
  }

  // ---------------------------------------------------------------- drawing
  function drawHeadView() {
    const all = tokens();
    svg.replaceChildren(lines);
    lines.replaceChildren();
    const column = (kind) => all.map((token, i) => {
      const text = document.createElementNS(NS, "text");
      text.textContent = token;
      text.setAttribute("class", `attention-${kind}`);
      text.setAttribute("y", String(TOP + i * ROW));
      text.dataset.index = String(i);
      svg.append(text);
      return text;
    });
    const queries = column("query");
    const keys = column("key");
    const width = Math.max(20, ...queries.map((t, i) => t.getComputedTextLength() || 7.5 * all[i].length));
    const xq = PAD + width;
    const xk = xq + GAP;
    queries.forEach((t) => { t.setAttribute("x", String(xq)); t.setAttribute("text-anchor", "end"); });
    keys.forEach((t) => t.setAttribute("x", String(xk)));
    svg.setAttribute("width", String(xk + width + PAD));
    svg.setAttribute("height", String(2 * TOP + Math.max(0, all.length - 1) * ROW));
    queries.forEach((t, i) => {
      t.addEventListener("mouseenter", () => { if (!state.pinned) { state.focus = i; drawLines(queries); } });
      t.addEventListener("mouseleave", () => { if (!state.pinned) { state.focus = null; drawLines(queries); } });
      t.addEventListener("click", () => {
        state.pinned = !(state.pinned && state.focus === i);
        state.focus = state.pinned ? i : null;
        drawLines(queries);
      });
    });
    if (state.focus !== null && state.focus >= all.length) { state.focus = null; state.pinned = false; }
    drawLines(queries);
  }

  function drawLines(queries) {
    lines.replaceChildren();
    const weights = state.layerData.weights;
    const count = tokens().length;
    const xq = Number(queries[0]?.getAttribute("x") ?? 0);
    const xk = xq + GAP;
    for (const h of state.heads) {
      const color = headColor(h, headCount());
      for (let i = 0; i < count; i += 1) {
        if (state.focus !== null && i !== state.focus) continue;
        for (let j = 0; j < count; j += 1) {
          const w = weights[h][i][j];
          if (w === null || w < MIN_WEIGHT) continue;
          const line = document.createElementNS(NS, "line");
          for (const [name, value] of [["x1", xq + 6], ["y1", TOP + i * ROW], ["x2", xk - 6], ["y2", TOP + j * ROW],
            ["stroke", color], ["stroke-width", 2], ["stroke-opacity", w], ["data-head", h], ["data-query", i], ["data-key", j]]) {
            line.setAttribute(name, String(value));
          }
          lines.append(line);
        }
      }
    }
    queries.forEach((t, i) => t.classList.toggle("attention-focus", i === state.focus));
    svg.dataset.focus = state.focus === null ? "" : String(state.focus);
    svg.dataset.lines = String(lines.childElementCount);
  }

  function drawMatrix() {
    const all = tokens();
    const z = state.layerData.weights[state.head];
    const labels = all.map(escapeHtml);
    const customdata = all.map((_, i) => all.map((__, j) => [labels[i], labels[j]]));
    matrixNode.style.height = `${Math.min(900, Math.max(420, 18 * all.length + 220))}px`;
    matrixNode.dataset.head = String(state.head);
    matrixNode.dataset.layer = String(state.layer);
    plot(matrixNode, [{
      type: "heatmap",
      z,
      x: all.map((_, i) => i),
      y: all.map((_, i) => i),
      customdata,
      colorscale: MAGMA,
      zmin: 0,
      colorbar: { title: { text: "weight", side: "right" }, thickness: 12 },
      hovertemplate: "query %{customdata[0]}<br>key %{customdata[1]}<br>weight %{z:.3f}<extra></extra>",
    }], {
      title: { text: `${escapeHtml(state.layerData.name)} · head ${state.head}: query → key`, font: { size: 14 } },
      xaxis: { ...tokenAxis(all, "key token"), tickangle: -60, constrain: "domain" },
      yaxis: { ...tokenAxis(all, "query token"), autorange: "reversed", scaleanchor: "x" },
      margin: { l: 70, r: 20, t: 40, b: 60 },
    });
  }

  function drawRollout() {
    const all = state.rollout.tokens;
    const values = state.rollout.rollout[state.row] ?? [];
    rolloutNode.dataset.row = String(state.row);
    plot(rolloutNode, [{
      type: "bar",
      x: all.map((_, i) => i),
      y: values,
      customdata: all.map(escapeHtml),
      marker: { color: "#b73779" },
      hovertemplate: "%{customdata}<br>share %{y:.3f}<extra></extra>",
    }], {
      title: { text: `What “${escapeHtml(all[state.row] ?? "")}” draws on, through every layer`, font: { size: 14 } },
      xaxis: { ...tokenAxis(all, "input token (key)"), tickangle: -60 },
      yaxis: { title: { text: "share (the row sums to 1)" }, rangemode: "tozero" },
      margin: { l: 60, r: 20, t: 40, b: 60 },
    });
  }

  function drawEntropy() {
    const { entropy, uniform, layers } = state.entropy;
    const names = layers.map(escapeHtml);
    const heads = entropy[0]?.length ?? 0;
    entropyNode.style.height = `${Math.max(260, 34 * layers.length + 150)}px`;
    plot(entropyNode, [{
      type: "heatmap",
      z: entropy,
      x: [...Array(heads).keys()],
      y: layers.map((_, i) => i),
      customdata: entropy.map((row, l) => row.map(() => names[l])),
      colorscale: "Viridis",
      zmin: 0,
      zmax: uniform,
      colorbar: { title: { text: `nats (${fmt(uniform, 3)} = uniform)`, side: "right" }, thickness: 12 },
      hovertemplate: "%{customdata}, head %{x}<br>entropy %{z:.3f} nats<extra></extra>",
    }], {
      title: { text: "How spread each head's attention is", font: { size: 14 } },
      xaxis: { title: { text: "head" }, dtick: 1, showgrid: false, zeroline: false },
      yaxis: { ...tokenAxis(layers, "layer"), autorange: "reversed" },
      shapes: [{ type: "rect", x0: state.head - 0.5, x1: state.head + 0.5, y0: state.layer - 0.5, y1: state.layer + 0.5,
        line: { color: "#fff", width: 2.5 } }],
      margin: { l: 70, r: 20, t: 40, b: 45 },
    });
  }

  function drawLayer() {
    root.dataset.layer = String(state.layer);
    root.dataset.head = String(state.head);
    drawHeadView();
    drawMatrix();
  }

  // ---------------------------------------------------------------- data
  async function setLayer(layer) {
    const seq = ++state.seq;
    const answer = await api("attention/layer", { run: ctx.run, example: state.example, layer });
    if (seq !== state.seq) return;
    state.layer = layer;
    state.layerData = answer;
    ctx.remember("layer", layer);
    syncBoxes();
    drawLayer();
    drawEntropy();
  }

  async function loadExample() {
    const seq = ++state.seq;
    const params = { run: ctx.run, example: state.example };
    const [layerData, rollout, entropy] = await Promise.all([
      api("attention/layer", { ...params, layer: state.layer }),
      api("attention/rollout", params),
      api("attention/entropy", params),
    ]);
    if (seq !== state.seq) return;
    Object.assign(state, { layerData, rollout, entropy });
    if (state.row >= rollout.tokens.length) state.row = 0;
    root.dataset.example = String(state.example);
    buildRowMenu();
    drawLayer();
    drawRollout();
    drawEntropy();
    overview.querySelector("img")?.remove();
    if (overview.open) await loadOverview();
  }

  async function loadOverview() {
    if (overview.querySelector("img")) return;
    const example = state.example;
    const answer = await api("attention/model_view", { run: ctx.run, example });
    if (example !== state.example || overview.querySelector("img")) return;
    overview.append(image(answer.figure, "every head of every layer as a query × key heat map", "figure attention-figure"));
  }

  async function load() {
    state.info = await api("attention/examples", { run: ctx.run });
    const { examples, layers, view } = state.info;
    if (!examples.some((e) => e.example === state.example)) state.example = examples[0].example;
    if (!(Number.isInteger(state.layer) && state.layer >= 0 && state.layer < layers.length)) state.layer = view.layer;
    const valid = (h) => Number.isInteger(h) && h >= 0 && h < headCount();
    state.heads = Array.isArray(state.heads) && state.heads.every(valid) ? state.heads : view.heads;
    if (!valid(state.head)) state.head = view.heads[0] ?? 0;
    buildControls();
    await loadExample();
  }

  await load();
  entropyNode.on("plotly_click", (event) => {
    const point = event.points?.[0];
    if (!point) return;
    state.head = Number(point.x);
    if (!state.heads.includes(state.head)) state.heads = [...state.heads, state.head].sort((a, b) => a - b);
    ctx.remember("head", state.head);
    ctx.remember("heads", state.heads);
    setLayer(Number(point.y)).catch(ctx.fail);
  });
  return { refresh: load };
}
