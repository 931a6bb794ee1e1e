// Shared helpers of the dashboard's panels. Data arrives only as JSON and enters the page only through
// textContent, attributes set one by one, data: image URIs and Plotly's data arrays — never as HTML.

const TOKEN = new URLSearchParams(window.location.search).get("token");

let plotly = null;

// Load plotly.js once (resolves when `Plotly` exists). Running it takes ~0.35 s of main thread on 2 cores,
// so the shell starts a panel's first requests before it, and the server computes while the browser runs it.
export function loadPlotly() {
  plotly ??= new Promise((resolve, reject) => {
    if (window.Plotly) {
      resolve();
      return;
    }
    const script = document.createElement("script");
    script.src = "static/vendor/plotly-cartesian.min.js";
    script.addEventListener("load", () => resolve());
    script.addEventListener("error", () => reject(new Error("plotly.js failed to load")));
    document.head.append(script);
  });
  return plotly;
}

export const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#bc4c00", "#6e7781"];

// GET /api/<path> with the query `params` (null/undefined left out); rejects with the server's message.
export async function api(path, params = {}) {
  const url = new URL(`api/${path}`, document.baseURI);
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined) continue;
    for (const item of Array.isArray(value) ? value : [value]) url.searchParams.append(key, String(item));
  }
  const headers = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
  const response = await fetch(url, { headers });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response.json();
}

// A new element with an optional class and text (always textContent).
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// A <table>: `rows` is a list of lists of cell texts; the first row is the header.
export function table(rows, className = "data") {
  const node = el("table", className);
  rows.forEach((row, i) => {
    const tr = el("tr");
    for (const cell of row) tr.append(el(i === 0 ? "th" : "td", null, cell ?? "—"));
    node.append(tr);
  });
  return node;
}

// An <img> from a data: URI sent by the server.
export function image(uri, alt, className = "figure") {
  const node = el("img", className);
  if (typeof uri === "string" && uri.startsWith("data:image/")) node.src = uri;
  node.alt = alt ?? "";
  return node;
}

// A <select> with `options` (strings or [value, label] pairs); calls `onChange(value)`.
export function select(options, value, onChange, label) {
  const wrap = el("label", "control");
  if (label) wrap.append(el("span", null, label));
  const node = el("select");
  for (const option of options) {
    const [v, text] = Array.isArray(option) ? option : [option, option];
    const item = el("option", null, text);
    item.value = String(v);
    node.append(item);
  }
  if (value !== undefined && value !== null) node.value = String(value);
  node.addEventListener("change", () => onChange(node.value));
  wrap.append(node);
  return wrap;
}

const BASE_LAYOUT = {
  margin: { l: 60, r: 20, t: 36, b: 45 },
  font: { family: "system-ui, sans-serif", size: 12 },
  paper_bgcolor: "#fff",
  plot_bgcolor: "#fff",
};

// Draw (or redraw in place) a plotly chart in `node`.
export function plot(node, traces, layout = {}, config = {}) {
  return Plotly.react(node, traces, { ...BASE_LAYOUT, ...layout }, { responsive: true, displaylogo: false, ...config });
}

// A chart container of a given height (px).
export function chart(height = 420, className = "chart") {
  const node = el("div", className);
  node.style.height = `${height}px`;
  return node;
}

export const fmt = (value, digits = 3) =>
  value === null || value === undefined || Number.isNaN(value) ? "—" : Number(value).toPrecision(digits);

// A user string made inert for Plotly labels, titles and legend names (Plotly renders a subset of HTML there).
export const escapeHtml = (text) =>
  String(text ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
