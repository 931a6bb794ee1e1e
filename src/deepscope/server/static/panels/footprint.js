// Reproducibility & footprint: the report's recipe to run it again, what the run ran on, the energy, CO₂-eq
// and water of the recorded block (with how they were obtained and where the constants come from), and the
// split manifest: each split's size and digest, and its items on demand.
import { api, el, fmt, table } from "../ui.js";

const PAGE = 20;

// A number to 3 significant digits, in exponent form when tiny or huge (a footprint is often micro-something).
const num = (v) => (v === null || v === undefined ? "—" : v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6) ? v.toExponential(2) : fmt(v, 3));

// A quantity in the unit that keeps it readable: [value, unit] pairs from the largest unit down.
function scaled(value, units) {
  if (value === null || value === undefined) return "—";
  for (const [factor, unit] of units) if (Math.abs(value) >= factor || factor === units.at(-1)[0]) return `${fmt(value / factor, 3)} ${unit}`;
  return "—";
}
const ENERGY = [[1, "kWh"], [1e-3, "Wh"], [1e-6, "mWh"]];
const MASS = [[1000, "kg"], [1, "g"], [1e-3, "mg"]];
const VOLUME = [[1, "L"], [1e-3, "mL"], [1e-6, "µL"]];
const duration = (s) => (s === null ? "—" : s >= 120 ? `${fmt(s / 60, 3)} min` : `${fmt(s, 3)} s`);

function section(title, id) {
  const node = el("section", "footprint-section");
  node.id = id;
  node.append(el("h3", null, title));
  return node;
}

function command(text, className) {
  const pre = el("pre", `footprint-command ${className}`);
  pre.append(el("code", null, text));
  return pre;
}

function recipeSection(answer) {
  const node = section("How to reproduce", "footprint-recipe-section");
  if (!answer.recipe) {
    node.append(el("p", "muted", "No environment was recorded for this run, so there is no recipe."));
    return node;
  }
  node.append(el("p", "muted", "The command line the report prints: the code's commit, the library versions and the command that made the run."));
  node.append(command(answer.recipe, "footprint-recipe"));
  return node;
}

function environmentSection(answer) {
  const node = section("Environment", "footprint-environment");
  if (!answer.environment) {
    node.append(el("p", "muted", "No environment recorded."));
    return node;
  }
  node.append(el("p", "muted", "Recorded when the run was created."));
  const grid = el("div", "footprint-env");
  for (const part of answer.environment) {
    const box = el("div", "footprint-env-part");
    box.dataset.part = part.title;
    box.append(el("h4", null, part.title), table([["setting", "value"], ...part.rows], "data footprint-table"));
    grid.append(box);
  }
  node.append(grid);
  return node;
}

function tile(quantity, value, label, detail) {
  const node = el("div", "footprint-tile");
  node.dataset.quantity = quantity;
  node.append(el("span", "footprint-value", value), el("span", "footprint-label", label));
  if (detail) node.append(el("span", "footprint-detail", detail));
  return node;
}

function costSection(answer) {
  const node = section("Footprint of the recorded block", "footprint-cost");
  const cost = answer.footprint;
  if (!cost) {
    node.append(el("p", "muted", "No footprint recorded: record the run with Recorder(..., footprint=True)."));
    return node;
  }
  if (cost.error) {
    node.append(el("p", "error", cost.error));
    return node;
  }
  const tiles = el("div", "footprint-tiles");
  tiles.append(
    tile("energy", scaled(cost.energy_kwh, ENERGY), "energy", `${num(cost.energy_kwh)} kWh`),
    tile("co2", scaled(cost.co2_g, MASS), "CO₂-eq", `${num(cost.co2_g)} g`),
    tile("water", scaled(cost.water_l, VOLUME), "water (on site)", `${num(cost.water_l)} L`),
    tile("duration", duration(cost.seconds), "duration", `${fmt(cost.seconds, 4)} s`),
  );
  const how = el("p", "footprint-how");
  how.dataset.measured = String(cost.measured);
  how.append(el("strong", null, cost.measured ? "Measured: " : "Estimated: "), el("span", null, `${cost.how}.`));
  const method = el("p", "footprint-method");
  method.append(el("strong", null, "Method: "), el("span", null, cost.method));
  const equivalents = el("ul", "footprint-equivalents");
  for (const item of cost.equivalents) {
    const li = el("li", null, item.text);
    li.dataset.name = item.name;
    equivalents.append(li);
  }
  const constants = table([["constant", "value", "source"], ...cost.constants.map((c) => [c.name, c.value, c.source || "—"])], "data footprint-table footprint-constants");
  node.append(tiles, how, method, el("h4", null, "That is"), equivalents, el("h4", null, "Constants"), constants,
    el("p", "muted", "Grid intensities are annual country averages; making the hardware, the network and the water of the power plants are not counted. Read the figures as orders of magnitude."));
  return node;
}

function splitsSection(answer, ctx, state) {
  const node = section("Data splits", "footprint-splits");
  const manifest = answer.manifest;
  if (!manifest) {
    node.append(el("p", "muted", "No split manifest: record one with deepscope.repro.split_manifest({...}).record(run_dir)."));
    return node;
  }
  if (manifest.error) {
    node.append(el("p", "error", manifest.error));
    return node;
  }
  const digest = el("p", "footprint-digest");
  digest.append(el("span", null, "Manifest digest "), el("code", null, manifest.digest));
  const rows = el("table", "data footprint-table footprint-split-table");
  const head = el("tr");
  for (const text of ["split", "items", "identified by", "digest (sha256)", ""]) head.append(el("th", null, text));
  rows.append(head);
  const items = el("div", "footprint-items");
  for (const split of manifest.splits) {
    const tr = el("tr");
    tr.dataset.split = split.name;
    const button = el("button", "footprint-show", "show items");
    button.type = "button";
    button.addEventListener("click", () => {
      state.split = split.name;
      ctx.remember("split", split.name);
      showItems(items, ctx, split.name, 0).catch(ctx.fail);
    });
    const digestCell = el("td");
    digestCell.append(el("code", null, split.digest));
    const action = el("td");
    action.append(button);
    tr.append(el("td", null, split.name), el("td", null, split.count.toLocaleString()), el("td", null, split.kind), digestCell, action);
    rows.append(tr);
  }
  const shared = manifest.duplicates.length
    ? manifest.duplicates.map((d) => `${d.count.toLocaleString()} items of ${d.second} are also in ${d.first}`).join("; ")
    : "No item is in two splits.";
  node.append(digest, rows, el("p", "footprint-duplicates", shared));
  if (answer.verify) node.append(el("p", "muted", "To check the data still matches:"), command(answer.verify, "footprint-verify"));
  node.append(items);
  if (state.split && manifest.splits.some((s) => s.name === state.split)) showItems(items, ctx, state.split, 0).catch(ctx.fail);
  return node;
}

async function showItems(holder, ctx, name, offset) {
  const answer = await api("footprint/split", { run: ctx.run, split: name, offset, limit: PAGE });
  const rows = answer.items.map((item) => [`#${item.index}`, item.path ?? "(by position)", item.hash]);
  const body = el("div", "footprint-items-body");
  body.dataset.split = name;
  const last = answer.offset + answer.items.length;
  body.append(el("h4", null, `${name}: items ${answer.offset + 1}–${last} of ${answer.count.toLocaleString()}`),
    table([["item", "path", "content hash"], ...rows], "data footprint-table footprint-item-table"));
  const nav = el("div", "controls");
  if (answer.offset > 0) nav.append(pager("previous", () => showItems(holder, ctx, name, Math.max(0, answer.offset - PAGE)).catch(ctx.fail)));
  if (last < answer.count) nav.append(pager("next", () => showItems(holder, ctx, name, last).catch(ctx.fail)));
  body.append(nav);
  holder.replaceChildren(body);
}

function pager(text, onClick) {
  const button = el("button", `footprint-page footprint-${text}`, `${text} ${PAGE}`);
  button.type = "button";
  button.addEventListener("click", onClick);
  return button;
}

export async function render(container, ctx) {
  const state = { seq: 0, split: ctx.remember("split") };
  async function load() {
    const seq = ++state.seq;
    const answer = await api("footprint/summary", { run: ctx.run });
    if (seq !== state.seq) return;
    container.replaceChildren(
      recipeSection(answer),
      environmentSection(answer),
      costSection(answer),
      splitsSection(answer, ctx, state),
    );
  }
  await load();
  return { refresh: load };
}
