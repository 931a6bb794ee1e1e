// Dataset explanations: per recorded explain_dataset run, its summary and failed shards, the mean map of each
// explained class (click one to filter the examples), the recorded examples (click one for its map) and any
// item's map by its position, read from the shard folder while that folder still holds the explanation.
import { api, el, fmt, image, select, table } from "../ui.js";

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

function size(bytes) {
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit ? `${value.toFixed(1)} ${UNITS[unit]}` : `${value} B`;
}

function section(id, title) {
  const node = el("section", "explanations-section");
  node.id = id;
  node.append(el("h3", null, title));
  return node;
}

// A clickable tile: its pictures (data: URIs with their alt texts) over its caption lines.
function tile(pictures, lines, className) {
  const node = el("button", `explanations-tile ${className}`);
  node.type = "button";
  const row = el("span", "explanations-pictures");
  for (const [uri, alt] of pictures) if (uri) row.append(image(uri, alt, "explanations-img"));
  node.append(row, ...lines.map(([text, kind]) => el("span", `explanations-${kind}`, text)));
  return node;
}

function summaryTable(s) {
  const rows = [
    ["method", "layer", "target", "covered / items", "shards", "backend", "seconds", "items/s", "bytes", "dtype"],
    [s.method, s.layer ?? "—", s.target, `${s.covered} / ${s.items}`, String(s.shards), s.backend, fmt(s.seconds, 3),
      fmt(s.items_per_second, 3), size(s.bytes), s.dtype],
  ];
  const node = table(rows, "data explanations-summary");
  node.id = "explanations-summary";
  return node;
}

function failedTable(failed) {
  const rows = [["shard", "items", "attempts", "error"],
    ...failed.map((f) => [String(f.shard), `${f.start}–${f.stop - 1}`, String(f.attempts), f.error])];
  const node = table(rows, "data explanations-failed");
  node.id = "explanations-failed";
  return node;
}

export async function render(container, ctx) {
  const state = { list: [], name: ctx.remember("name"), cls: null };
  const latest = new Map();
  const ticket = (view) => {
    const mine = (latest.get(view) ?? 0) + 1;
    latest.set(view, mine);
    return () => latest.get(view) === mine;
  };
  const controls = el("div", "controls explanations-controls");
  const summary = section("explanations-summary-section", "Summary");
  const classes = section("explanations-classes-section", "Mean map per explained class");
  const scaleNote = el("p", "muted");
  classes.append(scaleNote);
  const classTiles = el("div", "explanations-gallery");
  classTiles.id = "explanations-classes";
  classes.append(classTiles);
  const examples = section("explanations-examples-section", "Examples");
  const exampleControls = el("div", "controls");
  const exampleNote = el("p", "muted");
  const exampleTiles = el("div", "explanations-gallery");
  exampleTiles.id = "explanations-examples";
  examples.append(exampleControls, exampleNote, exampleTiles);
  const item = section("explanations-item-section", "One item's map");
  const itemForm = el("div", "controls");
  const itemNote = el("p", "muted");
  const itemCard = el("div", "card explanations-item");
  itemCard.id = "explanations-item";
  item.append(itemNote, itemForm, itemCard);
  container.append(controls, summary, classes, examples, item);

  const current = () => state.list.find((s) => s.name === state.name);

  function itemError(message) {
    itemCard.dataset.state = "error";
    itemCard.replaceChildren(el("p", "error", message));
  }

  // Item `position`'s map from its shard; the server's refusal (a failed shard, a position out of range) in place.
  async function showItem(position) {
    const fresh = ticket("item");
    if (!Number.isInteger(position)) {
      itemError("Enter an item's position: a whole number.");
      return;
    }
    itemCard.dataset.state = "loading";
    let answer;
    try {
      answer = await api("explanations/item", { run: ctx.run, name: state.name, position });
    } catch (error) {
      if (fresh()) itemError(error.message);
      return;
    }
    if (!fresh()) return;
    itemCard.dataset.state = "ready";
    itemCard.dataset.position = String(answer.position);
    const pictures = el("div", "explanations-pictures");
    const views = [[answer.map, "its map, |m| scaled to [0, 1]"], [answer.image, "the input"],
      [answer.overlay, "the map over it"]];
    for (const [uri, caption] of views.filter(([uri]) => uri)) {
      const figure = el("figure", "explanations-view");
      figure.append(image(uri, `item ${answer.position}: ${caption}`, "explanations-img explanations-big"),
        el("figcaption", "muted", caption));
      pictures.append(figure);
    }
    const facts = table([
      ["item", "explained class", "score", "shard", "stored map", "spatial map range"],
      [String(answer.position), answer.label, fmt(answer.score, 4), `${answer.shard} (${answer.file})`,
        answer.shape.join(" × "), `${fmt(answer.min, 3)} to ${fmt(answer.max, 3)}`],
    ], "data explanations-facts");
    itemCard.replaceChildren(pictures, facts);
  }

  async function drawExamples() {
    const fresh = ticket("examples");
    const answer = await api("explanations/examples", { run: ctx.run, name: state.name, cls: state.cls });
    if (!fresh()) return;
    exampleTiles.dataset.name = answer.name;
    exampleTiles.dataset.cls = answer.cls === null ? "" : String(answer.cls);
    const choices = [["", "all classes"], ...answer.classes.map((c) => [c.class, `${c.label} (${c.count})`])];
    const choice = select(choices, state.cls ?? "", (value) => {
      state.cls = value === "" ? null : Number(value);
      drawExamples().catch(ctx.fail);
    }, "Class");
    choice.querySelector("select").id = "explanations-class";
    exampleControls.replaceChildren(choice);
    const readable = current()?.folder.available;
    const chosen = answer.classes.find((c) => c.class === answer.cls);
    if (chosen && !answer.total) exampleNote.textContent = `No recorded example explains ${chosen.label}.`;
    else if (!answer.total) exampleNote.textContent = "No examples were recorded (record(run, data=...) stores some).";
    else {
      const { length } = answer.examples;
      const shown = length < answer.total ? `the first ${length} of ${answer.total}` : `${answer.total}`;
      const hint = readable ? " Click one for its map from the shards." : "";
      exampleNote.textContent = `Showing ${shown} examples: the input and its map over it.${hint}`;
    }
    exampleTiles.replaceChildren(...answer.examples.map((e) => {
      const node = tile([[e.image, `item ${e.position}`], [e.overlay ?? e.map, `map of item ${e.position}`]],
        [[`#${e.position}`, "index"], [e.label, "label"]], "explanations-example");
      node.dataset.position = String(e.position);
      node.dataset.cls = String(e.class);
      node.disabled = !readable;
      node.addEventListener("click", () => showItem(e.position).catch(ctx.fail));
      return node;
    }));
  }

  async function drawClasses() {
    const fresh = ticket("classes");
    const answer = await api("explanations/classes", { run: ctx.run, name: state.name });
    if (!fresh()) return;
    classTiles.dataset.name = answer.name;
    scaleNote.textContent = "Each item's map is |m| min–max scaled to [0, 1] before averaging; every class shares "
      + `one colour scale (inferno, 0 to ${fmt(answer.vmax)}, the largest mean). Click a class for its examples.`;
    classTiles.replaceChildren(...answer.classes.map((c) => {
      const count = `${c.count} item${c.count === 1 ? "" : "s"}`;
      const node = tile([[c.mean, `mean map of ${c.label}`]], [[c.label, "label"], [count, "count"]], "explanations-class");
      node.dataset.cls = String(c.class);
      node.title = "show this class's examples";
      node.addEventListener("click", () => {
        state.cls = c.class;
        drawExamples().catch(ctx.fail);
      });
      return node;
    }));
  }

  function drawSummary() {
    const s = current();
    const parts = [summaryTable(s)];
    if (s.params.length) parts.push(el("p", "muted", `Parameters: ${s.params.map(([k, v]) => `${k}=${v}`).join(", ")}`));
    const folder = s.folder.path || "(no folder recorded)";
    parts.push(el("p", "muted", `Map per item: ${s.map_shape.join(" × ")}. Shards in ${folder}.`));
    const missing = `${s.failed.length} failed shard(s): ${s.items - s.covered} items have no map`;
    if (s.failed.length) parts.push(el("h4", "error", missing), failedTable(s.failed));
    else parts.push(el("p", "muted", `Every shard was written: all ${s.items} items have a map.`));
    summary.replaceChildren(summary.firstChild, ...parts);
    itemCard.replaceChildren();
    delete itemCard.dataset.state;
    if (!s.folder.available) {
      itemNote.textContent = `Single maps cannot be read: ${s.folder.reason}`;
      itemForm.replaceChildren();
      return;
    }
    itemNote.textContent = "Any item's map by its position in the dataset, read from the shard that holds it.";
    const label = el("label", "control");
    const input = el("input");
    input.type = "number";
    input.min = "0";
    input.max = String(Math.max(0, s.items - 1));
    input.step = "1";
    input.value = "0";
    input.id = "explanations-position";
    label.append(el("span", null, "Item position"), input);
    const show = el("button", "explanations-show", "Show its map");
    show.type = "button";
    show.id = "explanations-show";
    const go = () => showItem(input.value.trim() === "" ? NaN : Number(input.value)).catch(ctx.fail);
    show.addEventListener("click", go);
    input.addEventListener("keydown", (event) => event.key === "Enter" && go());
    itemForm.replaceChildren(label, show);
  }

  async function choose(name) {
    state.name = name;
    state.cls = null;
    ctx.remember("name", name);
    drawSummary();
    await Promise.all([drawClasses(), drawExamples()]);
  }

  async function load() {
    const fresh = ticket("index");
    const answer = await api("explanations/index", { run: ctx.run });
    if (!fresh()) return;
    state.list = answer.explanations;
    const names = state.list.map((s) => s.name);
    if (!names.includes(state.name)) state.name = names[0] ?? null;
    const choice = select(names, state.name, (value) => choose(value).catch(ctx.fail), "Explanation");
    choice.querySelector("select").id = "explanations-name";
    controls.replaceChildren(choice);
    if (state.name !== null) await choose(state.name);
  }

  await load();
  return { refresh: load };
}
