// Feature visualisation: per recorded objective, the optimised images with their labels, the objective of
// each image per step (click an image or a legend entry to single out its curve) and the settings.
import { api, chart, el, escapeHtml, fmt, image, plot, select, table } from "../ui.js";

const OKABE_ITO = ["#E69F00", "#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

export async function render(container, ctx) {
  const state = { results: null, index: ctx.remember("result"), answer: null, picked: null };
  const latest = new Map();
  const ticket = (view) => {
    const mine = (latest.get(view) ?? 0) + 1;
    latest.set(view, mine);
    return () => latest.get(view) === mine;
  };
  const controls = el("div", "controls featurevis-controls");
  const intro = el("p", "muted featurevis-description");
  const title = el("h3", "featurevis-title");
  const objective = el("p", "muted featurevis-objective");
  const gallery = el("div", "featurevis-images");
  gallery.id = "featurevis-images";
  const curveHead = el("h3", null, "The objective during the optimisation");
  const curveNote = el("p", "muted", "Each image's objective per step, measured on the transformed (jittered, scaled, rotated) image; the dashed line is their mean, the report's curve.");
  const curveChart = chart(340, "chart featurevis-curve");
  curveChart.id = "featurevis-curve";
  const settingsHead = el("h3", null, "Settings");
  const settings = el("div", "featurevis-settings");
  container.append(controls, intro, title, objective, gallery, curveHead, curveNote, curveChart, settingsHead, settings);

  function pick(i) {
    state.picked = state.picked === i ? null : i;
    for (const node of gallery.querySelectorAll(".featurevis-unit")) {
      node.setAttribute("aria-pressed", String(node.dataset.index === String(state.picked)));
    }
    drawCurves();
  }

  function drawCurves() {
    const answer = state.answer;
    const traces = answer.curves.map((curve, i) => ({
      type: "scatter", mode: "lines", x: answer.steps, y: curve, name: escapeHtml(answer.labels[i]),
      line: { color: OKABE_ITO[i % 8], width: state.picked === i ? 3 : 1.3 },
      opacity: state.picked === null || state.picked === i ? 1 : 0.2,
      customdata: answer.steps.map(() => i),
      hovertemplate: "step %{x}<br>%{y:.4g}<extra>%{fullData.name}</extra>",
    }));
    traces.push({
      type: "scatter", mode: "lines", x: answer.steps, y: answer.mean, name: "mean over the images",
      line: { color: "#1f2328", width: 2.2, dash: "dash" }, hovertemplate: "step %{x}<br>mean %{y:.4g}<extra></extra>",
    });
    plot(curveChart, traces, {
      xaxis: { title: { text: "optimisation step" } },
      yaxis: { title: { text: "objective" } },
      legend: { orientation: "v", x: 1.02, y: 1 },
      margin: { l: 60, r: 20, t: 20, b: 45 },
      uirevision: String(answer.index),
      hovermode: "closest",
    });
    curveChart.dataset.result = String(answer.index);
    curveChart.dataset.picked = state.picked === null ? "" : String(state.picked);
  }

  async function drawResult() {
    const fresh = ticket("result");
    const answer = await api("featurevis/result", { run: ctx.run, index: state.index });
    if (!fresh()) return;
    state.answer = answer;
    if (state.picked !== null && state.picked >= answer.images.length) state.picked = null;
    title.textContent = answer.title;
    objective.textContent = `Objective: ${answer.objective}; ${answer.images.length} images of ${answer.size[0]}×${answer.size[1]} px, shown as optimised (clipped to [0, 1], never rescaled per image).`;
    gallery.dataset.result = String(answer.index);
    gallery.replaceChildren(...answer.images.map((uri, i) => {
      const unit = el("button", "featurevis-unit");
      unit.type = "button";
      unit.dataset.index = String(i);
      unit.setAttribute("aria-pressed", String(state.picked === i));
      unit.title = "single out this image's curve";
      unit.append(image(uri, answer.labels[i], "featurevis-image"),
        el("span", "featurevis-label", answer.labels[i]),
        el("span", "featurevis-final", `final ${fmt(answer.final[i], 3)}`));
      unit.addEventListener("click", () => pick(i));
      return unit;
    }));
    drawCurves();
    const rows = table([["setting", "value"], ...answer.settings], "data featurevis-settings-table");
    rows.id = "featurevis-settings";
    settings.replaceChildren(answer.settings.length ? rows : el("p", "muted", "No settings were recorded."));
  }

  async function load() {
    const fresh = ticket("results");
    const answer = await api("featurevis/results", { run: ctx.run });
    if (!fresh()) return;
    state.results = answer.results;
    const indices = answer.results.map((r) => r.index);
    if (!indices.includes(Number(state.index))) state.index = indices[0] ?? 0;
    state.index = Number(state.index);
    const choice = select(answer.results.map((r) => [r.index, r.title]), state.index, (value) => {
      state.index = Number(value);
      state.picked = null;
      ctx.remember("result", state.index);
      drawResult().catch(ctx.fail);
    }, "Result");
    choice.querySelector("select").id = "featurevis-result";
    controls.replaceChildren(choice);
    intro.textContent = answer.description || "Images optimised to excite units of the network.";
    if (answer.results.length) await drawResult();
  }

  await load();
  return { refresh: load };
}
