// Findings: what `deepscope doctor` found in the run, most severe first; one card per finding with the
// report's evidence figure (a PNG data URI), the numbers it judged and what to try next.
import { api, el, fmt, image, select } from "../ui.js";

const NAMES = { error: ["error", "errors"], warning: ["warning", "warnings"], info: ["note", "notes"] };
const MARKS = { passed: "✓", error: "✕", warning: "!", info: "i" }; // shape as well as colour

const known = (severity) => (severity in NAMES ? severity : "other"); // class names only from a fixed set
const plural = (n, [one, many]) => `${n} ${n === 1 ? one : many}`;

// An evidence value as text: numbers to 3 significant digits, mappings as "key value" pairs.
function evidenceText(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e6) ? value.toExponential(2) : fmt(value, 3);
  }
  if (Array.isArray(value)) return value.map(evidenceText).join(", ");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k} ${evidenceText(v)}`).join(", ");
  return String(value);
}

function headline(answer) {
  const checks = answer.checks.length;
  if (answer.total === 0) {
    return answer.diagnosed ? `No findings from ${plural(checks, ["check", "checks"])}.` : "No findings.";
  }
  const counts = answer.severities.map((s) => plural(answer.counts[s] ?? 0, NAMES[s] ?? [s, s])).join(", ");
  const from = answer.diagnosed ? ` from ${plural(checks, ["check", "checks"])}` : " (the checks that ran were not recorded)";
  return `${plural(answer.total, ["finding", "findings"])}${from}: ${counts}.`;
}

// One chip per check that ran: passed, or the worst severity it raised.
function checkList(answer) {
  const list = el("ul", "findings-checks");
  list.setAttribute("aria-label", "checks that ran");
  for (const check of answer.checks) {
    const status = answer.raised[check] ?? "passed";
    const item = el("li", `findings-chip findings-chip-${status === "passed" ? status : known(status)}`);
    item.dataset.check = check;
    item.dataset.status = status;
    item.title = status === "passed" ? `${check}: nothing found` : `${check}: ${status}`;
    item.append(el("span", "findings-mark", MARKS[status] ?? "?"), el("span", null, check));
    list.append(item);
  }
  return list;
}

function openScalars() {
  document.querySelector('#tabs [data-panel="scalars"]')?.click();
}

function card(finding, figures) {
  const node = el("article", `card findings-card severity-${known(finding.severity)}`);
  Object.assign(node.dataset, { check: finding.check, severity: finding.severity, index: String(finding.index) });
  const head = el("div", "findings-head");
  head.append(el("span", `findings-badge findings-badge-${known(finding.severity)}`, finding.severity), el("h3", "findings-title", finding.title));
  const meta = el("p", "findings-meta");
  meta.append(el("code", "findings-check", finding.check), el("span", null, ` · ${finding.category}`));
  if (finding.steps) {
    meta.append(el("span", null, " · "));
    if (document.querySelector('#tabs [data-panel="scalars"]')) {
      const steps = el("button", "findings-steps", `steps ${finding.steps}`);
      steps.type = "button";
      steps.title = "open the Scalars tab to see these steps";
      steps.addEventListener("click", openScalars);
      meta.append(steps);
    } else {
      meta.append(el("span", "findings-steps", `steps ${finding.steps}`));
    }
  }
  const body = el("div", "findings-body");
  const figure = el("div", "findings-figure");
  if (finding.has_plot) {
    figure.append(el("p", "muted", "Drawing the evidence…"));
    figures.set(finding.index, figure);
  } else {
    figure.append(el("p", "muted", "This finding has no evidence plot."));
  }
  const side = el("div", "findings-side");
  const entries = Object.entries(finding.evidence);
  if (entries.length) {
    const values = el("table", "data findings-evidence");
    for (const [key, value] of entries) {
      const row = el("tr");
      row.dataset.key = key;
      row.append(el("th", null, key), el("td", null, evidenceText(value)));
      values.append(row);
    }
    side.append(el("h4", null, "Evidence"), values);
  }
  if (finding.actions.length) {
    const actions = el("ol", "findings-actions");
    for (const action of finding.actions) actions.append(el("li", null, action));
    side.append(el("h4", null, "Try next"), actions);
  }
  body.append(figure, side);
  node.append(head, meta, body);
  return node;
}

export async function render(container, ctx) {
  const state = { severity: ctx.remember("severity") ?? "", seq: 0, figures: new Map() };
  const summary = el("p", "findings-summary");
  const checks = el("div", "findings-checks-wrap");
  const controls = el("div", "controls");
  const cards = el("div", "findings-cards");
  container.append(summary, checks, controls, cards);

  async function load() {
    const seq = ++state.seq;
    const answer = await api("findings/list", { run: ctx.run, severity: state.severity });
    if (seq !== state.seq) return;
    await draw(answer, seq); // the cards show at once; the figures follow as they are drawn
  }

  async function refresh() {
    state.figures.clear(); // the doctor may have run again
    await load();
  }

  // The figure of a card, fetched once per finding (switching the filter redraws from memory).
  function figureOf(finding) {
    const key = `${finding.index}\u0000${finding.check}\u0000${finding.title}`;
    if (!state.figures.has(key)) {
      const pending = api("findings/figure", { run: ctx.run, index: finding.index }).then((answer) => answer.figure);
      pending.catch(() => state.figures.delete(key));
      state.figures.set(key, pending);
    }
    return state.figures.get(key);
  }

  async function draw(answer, seq) {
    summary.textContent = headline(answer);
    summary.dataset.total = String(answer.total);
    summary.dataset.checks = String(answer.checks.length);
    const legend = el("p", "muted findings-legend", "Checks that ran: ✓ nothing found · ✕ error · ! warning · i note");
    checks.replaceChildren(...(answer.checks.length ? [legend, checkList(answer)] : []));
    const options = [["", `all severities (${answer.total})`],
      ...answer.severities.map((s) => [s, `${(NAMES[s] ?? [s, s])[1]} (${answer.counts[s] ?? 0})`])];
    const filter = select(options, state.severity, (value) => {
      state.severity = value;
      ctx.remember("severity", value);
      load().catch(ctx.fail);
    }, "Show");
    filter.querySelector("select").id = "findings-severity";
    controls.replaceChildren(...(answer.total ? [filter] : []));
    const figures = new Map();
    cards.replaceChildren(...answer.findings.map((finding) => card(finding, figures)));
    cards.dataset.shown = String(answer.findings.length);
    if (answer.total && !answer.findings.length) cards.append(el("p", "muted", "No finding of this severity."));
    cards.dataset.figures = "loading";
    await Promise.all(answer.findings.filter((f) => figures.has(f.index)).map((finding) => figureOf(finding)
      .then((uri) => {
        if (seq !== state.seq) return;
        const holder = figures.get(finding.index);
        holder.replaceChildren(image(uri, `Evidence: ${finding.plot_title ?? "evidence"}`, "figure findings-image"));
      })
      .catch((error) => holder.replaceChildren(el("p", "error", `Evidence plot unavailable: ${error.message}`)))));
    if (seq === state.seq) cards.dataset.figures = "ready";
  }

  await load();
  return { refresh };
}
