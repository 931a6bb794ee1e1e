// deepscope dashboard shell: the runs list, the focused run's panel tabs, the URL hash, live updates.
// Each tab is an ES module static/panels/<name>.js exporting render(container, ctx) -> {refresh?, destroy?}.
import { COLORS, api, el, loadPlotly } from "./ui.js";

const POLL_MS = 2000;
const state = {
  runs: [],
  focus: null,
  selected: new Set(),
  panels: [],
  panel: null,
  view: null, // what the open panel's render() returned
  versions: new Map(),
  memory: new Map(), // per-panel choices kept across runs (e.g. the scalar tag)
  seq: 0,
  filter: "", // lower-case words a shown run's name or id must contain
};
const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

const colorOf = (id) => COLORS[Math.max(0, state.runs.findIndex((run) => run.id === id)) % COLORS.length];
const nameOf = (id) => state.runs.find((run) => run.id === id)?.name ?? id;

function readHash() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  return { run: params.get("run"), panel: params.get("panel"), compare: params.getAll("compare") };
}

function writeHash() {
  const params = new URLSearchParams();
  if (state.focus) params.set("run", state.focus);
  if (state.panel) params.set("panel", state.panel);
  for (const id of state.selected) if (id !== state.focus) params.append("compare", id);
  history.replaceState(null, "", `#${params}`);
}

// Whether a run passes the filter box (its name or id contains every word); open and compared runs always do.
function shown(run) {
  if (run.id === state.focus || state.selected.has(run.id)) return true;
  const text = `${run.name} ${run.id}`.toLowerCase();
  return state.filter.split(/\s+/).every((word) => text.includes(word));
}

function renderRuns() {
  const list = $("runs");
  list.replaceChildren();
  let group = null;
  let hidden = 0;
  for (const run of state.runs) {
    if (!shown(run)) {
      hidden += 1;
      continue;
    }
    const folder = run.id.includes("/") ? run.id.slice(0, run.id.lastIndexOf("/")) : "";
    if (folder !== group && folder) list.append(el("li", "group", folder)); // runs grouped by experiment folder
    group = folder;
    const item = el("li");
    item.classList.toggle("focus", run.id === state.focus);
    item.dataset.run = run.id;
    const box = el("input");
    box.type = "checkbox";
    box.checked = state.selected.has(run.id);
    box.title = "overlay this run's curves";
    box.setAttribute("aria-label", `compare ${run.name}`);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(run.id);
      else if (run.id !== state.focus) state.selected.delete(run.id);
      else box.checked = true; // the open run is always shown
      openPanel().catch(fail);
    });
    const swatch = el("span", "swatch");
    swatch.style.background = colorOf(run.id);
    const name = el("button", "name", run.name);
    name.type = "button";
    name.addEventListener("click", () => focus(run.id).catch(fail));
    const created = run.created ? new Date(run.created * 1000).toLocaleString() : "";
    const meta = el("span", "meta", [run.id, run.status, created].filter(Boolean).join(" · "));
    const text = el("span", "text");
    text.append(name, meta);
    item.append(box, swatch, text);
    list.append(item);
  }
  if (state.runs.length === 0) list.append(el("li", "muted", "No runs found under this folder."));
  if (hidden) list.append(el("li", "muted", `${hidden} run${hidden === 1 ? "" : "s"} hidden by the filter`));
}

function renderTabs() {
  const nav = $("tabs");
  nav.replaceChildren();
  for (const panel of state.panels) {
    const tab = el("button", "tab", panel.title);
    tab.type = "button";
    tab.setAttribute("role", "tab");
    tab.dataset.panel = panel.name;
    tab.setAttribute("aria-selected", String(panel.name === state.panel));
    tab.addEventListener("click", () => {
      state.panel = panel.name;
      openPanel().catch(fail);
    });
    nav.append(tab);
  }
}

function fail(error) {
  setStatus(error.message ?? String(error), true);
  console.warn(error);
}

async function focus(id, panelsAnswer = null) {
  state.focus = id;
  state.selected.add(id);
  const answer = (panelsAnswer && (await panelsAnswer)) ?? (await api("panels", { run: id }));
  if (state.focus !== id) return;
  state.panels = answer.panels;
  if (!state.panels.some((p) => p.name === state.panel)) state.panel = state.panels[0]?.name ?? null;
  await openPanel();
}

async function openPanel() {
  const seq = ++state.seq;
  renderRuns();
  renderTabs();
  writeHash();
  state.view?.destroy?.();
  state.view = null;
  const container = $("panel");
  container.replaceChildren();
  delete document.body.dataset.panelReady;
  const panel = state.panels.find((p) => p.name === state.panel);
  if (!panel) {
    container.append(el("p", "muted", state.focus ? "This run holds nothing the dashboard can show yet." : "Choose a run."));
    document.body.dataset.panelReady = "none";
    return;
  }
  const module = await import(`./panels/${panel.name}.js`);
  if (seq !== state.seq) return;
  const memory = state.memory.get(panel.name) ?? new Map();
  state.memory.set(panel.name, memory);
  const ctx = {
    run: state.focus,
    runs: panel.compare ? [state.focus, ...[...state.selected].filter((id) => id !== state.focus)] : [state.focus],
    nameOf,
    colorOf,
    fail,
    remember: (key, value) => (value === undefined ? memory.get(key) ?? null : memory.set(key, value)),
  };
  setStatus(`${nameOf(state.focus)} · ${panel.title}`);
  // a panel's prefetch sends its first requests before plotly.js runs (the first paint's largest cost)
  const early = module.prefetch ? await module.prefetch(ctx).catch(() => null) : null;
  await loadPlotly();
  const view = await module.render(container, ctx, early);
  if (seq !== state.seq) {
    view?.destroy?.();
    return;
  }
  state.view = { ...(view ?? {}), panel: panel.name };
  document.body.dataset.panelReady = panel.name;
}

async function poll() {
  const watched = [...state.selected];
  const answers = await Promise.all(watched.map((run) => api("version", { run }).catch(() => null)));
  let changed = false;
  let live = false;
  watched.forEach((run, i) => {
    const answer = answers[i];
    if (!answer) return;
    live ||= answer.status === "running";
    if (state.versions.has(run) && state.versions.get(run) !== answer.version) changed = true;
    state.versions.set(run, answer.version);
  });
  $("live").hidden = !live;
  if (changed && state.view?.refresh) await state.view.refresh();
  else if (changed) await openPanel();
}

async function refreshRuns() {
  const answer = await api("runs");
  const known = state.runs.map((run) => `${run.id}:${run.status}`).join("|");
  state.runs = answer.runs;
  if (state.runs.map((run) => `${run.id}:${run.status}`).join("|") !== known) renderRuns();
}

// A link changed the hash (e.g. a finding's "see the curves"): open what it names, unless it is already open.
async function followHash() {
  const wanted = readHash();
  if (!state.runs.some((run) => run.id === wanted.run)) return;
  for (const id of wanted.compare) if (state.runs.some((run) => run.id === id)) state.selected.add(id);
  if (wanted.panel) state.panel = wanted.panel;
  if (wanted.run !== state.focus) await focus(wanted.run);
  else if (wanted.panel !== state.view?.panel) await openPanel();
}

async function main() {
  $("run-filter").addEventListener("input", (event) => {
    state.filter = event.target.value.trim().toLowerCase();
    renderRuns();
  });
  const wanted = readHash();
  // the hash's run and panel are fetched at once, alongside the runs list (one round trip, not three)
  const earlyPanels = wanted.run ? api("panels", { run: wanted.run }).catch(() => null) : null;
  if (wanted.panel && /^[a-z]+$/.test(wanted.panel)) import(`./panels/${wanted.panel}.js`).catch(() => {});
  await refreshRuns();
  const ids = new Set(state.runs.map((run) => run.id));
  for (const id of wanted.compare) if (ids.has(id)) state.selected.add(id);
  state.panel = wanted.panel;
  const first = ids.has(wanted.run) ? wanted.run : state.runs[0]?.id;
  setStatus(`${state.runs.length} run${state.runs.length === 1 ? "" : "s"}`);
  if (first) await focus(first, first === wanted.run ? earlyPanels : null);
  else renderRuns();
  await poll(); // the versions the page was drawn from: any later commit is a change
  document.body.dataset.ready = "true";
  window.addEventListener("hashchange", () => followHash().catch(fail)); // links between panels
  let ticks = 0;
  setInterval(() => {
    ticks += 1;
    poll().catch(() => {});
    if (ticks % 5 === 0) refreshRuns().catch(() => {});
  }, POLL_MS);
}

main().catch(fail);
