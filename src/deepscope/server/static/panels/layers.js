// Layers (Zeiler & Fergus 2014): one layer's feature maps on an input, the top images of each channel with
// their DeconvNet projections (click a unit to enlarge it), the first-layer filters, the layer statistics,
// and the occlusion and invariance studies. Every run string enters as textContent or escaped Plotly text.
import { api, chart, el, escapeHtml, fmt, image, plot, select, table } from "../ui.js";

// matplotlib's inferno (the report's feature-map scale), sampled at 9 stops
const INFERNO = ["#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06", "#fcffa4"]
  .map((color, i) => [i / 8, color]);
const OKABE_ITO = ["#E69F00", "#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
const SYMBOLS = ["circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "star"];
const STAT_LABELS = { zero_fraction: "zero fraction", dead_channels: "dead channels" };

function section(id, title, note) {
  const node = el("section", "layers-section");
  node.id = id;
  node.append(el("h3", null, title));
  if (note) node.append(el("p", "muted", note));
  const body = el("div", "layers-body");
  node.append(body);
  node.hidden = true;
  return { node, body };
}

// The maps (C, H, W) as one mosaic heatmap, 16 per row, NaN gaps between tiles; customdata = [channel, y, x].
function mosaic(answer) {
  const { shown, height: h, width: w, maps } = answer;
  const columns = Math.min(shown, 16);
  const rows = Math.ceil(shown / columns);
  const gap = Math.max(1, Math.floor(h / 8));
  const z = Array.from({ length: rows * (h + gap) - gap }, () => new Array(columns * (w + gap) - gap).fill(null));
  const custom = z.map((row) => row.map(() => null));
  maps.forEach((map, c) => {
    const y0 = Math.floor(c / columns) * (h + gap);
    const x0 = (c % columns) * (w + gap);
    for (let y = 0; y < h; y += 1) for (let x = 0; x < w; x += 1) {
      z[y0 + y][x0 + x] = map[y][x];
      custom[y0 + y][x0 + x] = [c, y, x];
    }
  });
  return { z, custom, columns, rows, gap };
}

export async function render(container, ctx) {
  const state = { index: null, layer: ctx.remember("layer"), channel: ctx.remember("channel"), top: null,
    normalize: null, occlusion: 0, transform: ctx.remember("transform") };
  // A view's later request supersedes its earlier one: ticket(view) returns "is this still the latest?".
  const latest = new Map();
  const ticket = (view) => {
    const mine = (latest.get(view) ?? 0) + 1;
    latest.set(view, mine);
    return () => latest.get(view) === mine;
  };
  const controls = el("div", "controls layers-controls");
  const intro = el("p", "muted layers-description");
  const maps = section("layers-maps-section", "Feature maps of one input",
    "Each tile is one channel of the layer on the first input, one colour scale for the layer (inferno). Click a tile to see that channel's strongest images.");
  const top = section("layers-top-section", "Strongest images per channel",
    "Per channel, the images whose spatial maximum is largest (distinct images): the DeconvNet projection of that unit (left) and the input patch under its receptive field (right). Click a channel to enlarge it.");
  const filters = section("layers-filters-section", "First-layer filters");
  const stats = section("layers-stats-section", "Layer statistics",
    "Per layer, the means over its channels of the mean, std and share of zeros; dead channels never take a non-zero value on the data; saturation applies to bounded activations.");
  const occlusion = section("layers-occlusion-section", "Occlusion study (Zeiler & Fergus Fig. 7)");
  const invariance = section("layers-invariance-section", "Invariance (Zeiler & Fergus Fig. 5)",
    "Euclidean distance between the features of the transformed and the original image, at an early and a late layer, and the probability of the true class; one line per image, a ring where the prediction is wrong.");
  container.append(controls, intro, maps.node, top.node, filters.node, stats.node, occlusion.node, invariance.node);

  const mapsChart = chart(320, "chart layers-maps");
  mapsChart.id = "layers-maps";
  const mapsNote = el("p", "muted layers-maps-note");
  maps.body.append(mapsChart, mapsNote);
  const unitGrid = el("div", "layers-units");
  unitGrid.id = "layers-units";
  const unitDetail = el("div", "layers-unit-detail");
  unitDetail.id = "layers-unit";
  top.body.append(unitGrid, unitDetail);
  const invarianceChart = chart(340, "chart layers-invariance");
  invarianceChart.id = "layers-invariance";
  let mapsClickBound = false;

  const layerInfo = () => state.index.layers.find((layer) => layer.name === state.layer);

  async function drawMaps() {
    const fresh = ticket("maps");
    const info = layerInfo();
    maps.node.hidden = !info?.maps;
    if (!info?.maps) return;
    const answer = await api("layers/maps", { run: ctx.run, layer: state.layer });
    if (!fresh()) return;
    const { z, custom, columns, rows, gap } = mosaic(answer);
    const aspect = (rows * (answer.height + gap)) / (columns * (answer.width + gap));
    const height = Math.round(Math.min(640, Math.max(140, (mapsChart.clientWidth || 900) * 0.92 * aspect + 24)));
    mapsChart.style.height = `${height}px`;
    plot(mapsChart, [{
      type: "heatmap", z, customdata: custom, colorscale: INFERNO, zmin: answer.min, zmax: answer.max, hoverongaps: false,
      colorbar: { title: { text: "activation", side: "right" }, thickness: 12 },
      hovertemplate: "channel %{customdata[0]}<br>row %{customdata[1]}, column %{customdata[2]}<br>%{z:.4g}<extra></extra>",
    }], {
      height,
      margin: { l: 10, r: 10, t: 10, b: 10 },
      xaxis: { visible: false, constrain: "domain" },
      yaxis: { visible: false, autorange: "reversed", scaleanchor: "x" },
    });
    mapsChart.dataset.layer = answer.layer;
    mapsChart.dataset.shown = String(answer.shown);
    mapsNote.textContent = `${answer.shown} of ${answer.channels} channels, ${answer.height}×${answer.width} each, row by row from channel 0; activations from ${fmt(answer.min, 3)} to ${fmt(answer.max, 3)}.`;
    if (!mapsClickBound) {
      mapsClickBound = true;
      mapsChart.on("plotly_click", (event) => {
        const channel = event.points?.[0]?.customdata?.[0];
        if (channel === undefined || channel === null) return;
        mapsChart.dataset.clicked = String(channel);
        if (state.top?.units.some((unit) => unit.channel === channel)) {
          chooseUnit(channel).then(() => unitDetail.scrollIntoView({ block: "nearest" })).catch(ctx.fail);
        }
        else unitDetail.replaceChildren(el("p", "muted", `Channel ${channel}: its strongest images were not recorded (recorded channels: ${state.top?.units.map((u) => u.channel).join(", ") || "none"}).`));
      });
    }
  }

  async function drawTop() {
    const fresh = ticket("top");
    const info = layerInfo();
    top.node.hidden = !info?.top;
    state.top = null;
    if (!info?.top) return;
    const answer = await api("layers/top", { run: ctx.run, layer: state.layer });
    if (!fresh()) return;
    state.top = answer;
    unitGrid.replaceChildren(...answer.units.map((unit) => {
      const card = el("button", "layers-unit");
      card.type = "button";
      card.dataset.channel = String(unit.channel);
      card.title = `channel ${unit.channel}: enlarge`;
      const images = el("span", "layers-unit-images");
      if (unit.projections) images.append(image(unit.projections, `DeconvNet projections of channel ${unit.channel}`, "layers-mosaic"));
      images.append(image(unit.patches, `input patches of channel ${unit.channel}`, "layers-mosaic"));
      card.append(el("span", "layers-unit-title", `ch ${unit.channel}`), images,
        el("span", "layers-unit-score", `max ${fmt(unit.scores[0], 3)}`));
      card.addEventListener("click", () => chooseUnit(unit.channel).catch(ctx.fail));
      return card;
    }));
    const channels = answer.units.map((unit) => unit.channel);
    await chooseUnit(channels.includes(state.channel) ? state.channel : channels[0]);
  }

  async function chooseUnit(channel) {
    if (channel === undefined) return;
    const fresh = ticket("unit");
    state.channel = channel;
    ctx.remember("channel", channel);
    for (const card of unitGrid.querySelectorAll(".layers-unit")) card.setAttribute("aria-pressed", String(card.dataset.channel === String(channel)));
    const answer = await api("layers/unit", { run: ctx.run, layer: state.layer, channel });
    if (!fresh()) return;
    const field = answer.field;
    const head = el("h4", null, `Channel ${answer.channel} of ${answer.layer}`);
    const note = el("p", "muted", `The ${answer.k} strongest images, best first; receptive field ${field.size[0]}×${field.size[1]} px, one unit every ${field.jump[0]} px. Grey: outside the image. Projections on their own scale (±99th percentile of |value|).`);
    const tiles = el("div", "layers-tiles");
    answer.patches.forEach((patch, r) => {
      const tile = el("figure", "layers-tile");
      tile.dataset.rank = String(r);
      const pair = el("div", "layers-pair");
      if (answer.projections) pair.append(image(answer.projections[r], `projection ${r + 1}`, "layers-big"));
      pair.append(image(patch, `patch ${r + 1}`, "layers-big"));
      const inside = answer.inside[r] < 1 ? ` · ${Math.round(100 * answer.inside[r])}% inside` : "";
      tile.append(pair, el("figcaption", "layers-tile-caption", `#${r + 1} · image ${answer.indices[r]} · ${fmt(answer.scores[r], 4)}${inside}`));
      tiles.append(tile);
    });
    unitDetail.dataset.channel = String(answer.channel);
    unitDetail.replaceChildren(head, note, tiles);
  }

  async function drawFilters() {
    const fresh = ticket("filters");
    const spec = state.index.filters;
    filters.node.hidden = !spec;
    if (!spec) return;
    const answer = await api("layers/filters", { run: ctx.run, normalize: state.normalize ?? spec.normalize });
    if (!fresh()) return;
    const choice = select([["shared", "one scale for the layer"], ["per_filter", "each filter on its own scale"]], answer.normalize, (value) => {
      state.normalize = value;
      drawFilters().catch(ctx.fail);
    }, "Scale");
    choice.querySelector("select").id = "layers-normalize";
    const note = el("p", "muted", `${answer.shape[0]} filters of ${answer.layer}, ${answer.shape[1]} input channels, ${answer.shape[2]}×${answer.shape[3]}; weights from ${fmt(answer.min, 3)} to ${fmt(answer.max, 3)}, mid-grey = 0.`);
    const figure = image(answer.figure, `filters of ${answer.layer}`, "figure layers-filters");
    figure.dataset.normalize = answer.normalize;
    const bar = el("div", "controls");
    bar.append(choice);
    filters.body.replaceChildren(bar, note, figure);
  }

  function drawStats() {
    const { columns, rows } = state.index.stats;
    stats.node.hidden = rows.length === 0;
    const cells = rows.map((row) => row.map((value, i) => (i === 0 || typeof value !== "number" ? value : (Number.isInteger(value) ? String(value) : fmt(value, 3)))));
    const node = table([columns.map((c) => STAT_LABELS[c] ?? c), ...cells], "data layers-stats");
    node.id = "layers-stats";
    [...node.rows].slice(1).forEach((tr, i) => {
      tr.dataset.layer = rows[i][0];
      tr.classList.toggle("layers-current", rows[i][0] === state.layer);
    });
    stats.body.replaceChildren(node);
  }

  async function drawOcclusion() {
    const fresh = ticket("occlusion");
    const studies = state.index.occlusion;
    occlusion.node.hidden = studies.length === 0;
    if (!studies.length) return;
    if (state.occlusion >= studies.length) state.occlusion = 0;
    const answer = await api("layers/occlusion", { run: ctx.run, index: state.occlusion });
    if (!fresh()) return;
    const choice = select(studies.map((s) => [s.index, `${s.index + 1}: a ${s.target_name} (${s.layer} map ${s.channel})`]), answer.index, (value) => {
      state.occlusion = Number(value);
      drawOcclusion().catch(ctx.fail);
    }, "Image");
    choice.querySelector("select").id = "layers-occlusion-index";
    const note = el("p", "muted", `A ${answer.window}-px square of value ${answer.baseline} slides every ${answer.stride} px over a ${answer.target_name}; the lowest probability of ${answer.target_name} it causes is ${fmt(answer.lowest_probability, 3)}.`);
    const figure = image(answer.figure, `occlusion study ${answer.index + 1}`, "figure layers-occlusion");
    figure.dataset.index = String(answer.index);
    const bar = el("div", "controls");
    bar.append(choice);
    occlusion.body.replaceChildren(bar, note, figure);
  }

  async function drawInvariance() {
    const fresh = ticket("invariance");
    const transforms = state.index.invariance;
    invariance.node.hidden = transforms.length === 0;
    if (!transforms.length) return;
    if (!transforms.includes(state.transform)) state.transform = transforms[0];
    const answer = await api("layers/invariance", { run: ctx.run, transform: state.transform });
    if (!fresh()) return;
    const choice = select(transforms, answer.transform, (value) => {
      state.transform = value;
      ctx.remember("transform", value);
      drawInvariance().catch(ctx.fail);
    }, "Transform");
    choice.querySelector("select").id = "layers-transform";
    const bar = el("div", "controls");
    bar.append(choice);
    invariance.body.replaceChildren(bar, invarianceChart);
    const panels = [...answer.layers.map((layer, i) => [`distance at ${layer}`, answer.distances[i]]), ["p(true class)", answer.probability]];
    const traces = [];
    panels.forEach(([, curves], p) => {
      const axis = p === 0 ? "" : String(p + 1);
      curves.forEach((curve, i) => {
        traces.push({
          type: "scatter", mode: "lines+markers", x: answer.values, y: curve, xaxis: `x${axis}`, yaxis: `y${axis}`,
          name: escapeHtml(`image ${i} (${answer.label_names[i]})`), legendgroup: `image${i}`, showlegend: p === 0,
          line: { color: OKABE_ITO[i % 8], width: 1.4 }, marker: { symbol: SYMBOLS[(i + Math.floor(i / 8)) % 8], size: 5 },
          hovertemplate: `%{x}<br>%{y:.4g}<extra>image ${i}</extra>`,
        });
      });
    });
    const last = panels.length;
    const wrongX = [];
    const wrongY = [];
    answer.wrong.forEach((row, i) => row.forEach((wrong, v) => {
      if (wrong) { wrongX.push(answer.values[v]); wrongY.push(answer.probability[i][v]); }
    }));
    traces.push({ type: "scatter", mode: "markers", x: wrongX, y: wrongY, xaxis: `x${last}`, yaxis: `y${last}`, name: "wrong class",
      marker: { symbol: "circle-open", size: 12, color: "#000", line: { width: 1.2 } }, hoverinfo: "skip" });
    const layout = {
      grid: { rows: 1, columns: last, pattern: "independent", xgap: 0.12 },
      margin: { l: 60, r: 20, t: 40, b: 50 },
      legend: { orientation: "h", y: -0.25 },
      annotations: panels.map(([title], p) => ({ text: escapeHtml(title), xref: `x${p === 0 ? "" : p + 1} domain`, yref: "paper", x: 0.5, y: 1.08, showarrow: false, font: { size: 12 } })),
      hovermode: "closest",
    };
    panels.forEach((_, p) => {
      const axis = p === 0 ? "" : String(p + 1);
      layout[`xaxis${axis}`] = { title: { text: answer.unit }, zeroline: false };
      layout[`yaxis${axis}`] = p === last - 1 ? { title: { text: "probability" }, range: [-0.02, 1.02] } : { title: { text: p === 0 ? "Euclidean distance" : "" }, rangemode: "tozero" };
    });
    plot(invarianceChart, traces, layout);
    invarianceChart.dataset.transform = answer.transform;
  }

  async function drawLayer() {
    drawStats();
    await Promise.all([drawMaps(), drawTop()]);
  }

  async function load() {
    const fresh = ticket("index");
    const index = await api("layers/index", { run: ctx.run });
    if (!fresh()) return;
    state.index = index;
    const names = index.layers.map((layer) => layer.name);
    if (!names.includes(state.layer)) state.layer = index.layers.find((layer) => layer.top)?.name ?? names[0] ?? null;
    const layerSelect = select(names, state.layer, (value) => {
      state.layer = value;
      ctx.remember("layer", value);
      drawLayer().catch(ctx.fail);
    }, "Layer");
    layerSelect.querySelector("select").id = "layers-layer";
    controls.replaceChildren(layerSelect);
    intro.textContent = `Data: ${index.description || "the given inputs"}${index.images ? ` (${index.images} images)` : ""}. Zeiler & Fergus (2014): what each channel responds to, traced back to the input.`;
    await Promise.all([drawLayer(), drawFilters(), drawOcclusion(), drawInvariance()]);
  }

  await load();
  return { refresh: load };
}
