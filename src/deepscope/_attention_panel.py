"""An interactive attention head view (token-to-token lines, like bertviz) as one self-contained HTML fragment.

Layer 4 (rendering): numpy and token strings in, HTML out, no torch. bertviz loads its JS from a CDN
and writes data into JS by text replacement; this panel inlines a constant script and style, reads
its data from a ``<script type="application/json">`` block with ``JSON.parse`` and sets every token
with ``textContent``, so it works offline, makes no request and cannot be scripted by a token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np
from markupsafe import Markup

__all__ = ["head_view_html"]

_ELEMENT_ID = re.compile(r"[A-Za-z0-9_-]+")
# What may not appear raw in a <script> block (it could close the block or, in old JS, end a string).
_JSON_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})

_STYLE = """
.ds-attn { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330; margin: 12px 0;
  overflow-x: auto; }
.ds-attn-controls { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; margin-bottom: 6px; }
.ds-attn-controls label { display: inline-flex; align-items: center; gap: 4px; cursor: pointer; }
.ds-attn-swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; }
.ds-attn-hint { color: #5a6275; font-size: 12px; margin: 0 0 4px; }
.ds-attn svg text { fill: #1d2330; dominant-baseline: middle; }
.ds-attn svg text.ds-attn-query { cursor: pointer; }
.ds-attn svg text.ds-attn-focus { font-weight: 700; fill: #0072B2; }
"""

# Constant: it finds its panel through its own data-panel attribute, so no data is ever written into code.
_SCRIPT = """
(function () {
  var root = document.getElementById(document.currentScript.dataset.panel);
  var data = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  var NS = "http://www.w3.org/2000/svg", ROW = 22, TOP = 14, PAD = 8, GAP = 150;
  var T = data.tokens.length, H = data.weights[0].length;
  var select = root.querySelector("select"), svg = root.querySelector("svg");
  var lines = svg.querySelector("g"), boxes = [], focus = null, pinned = false;
  function colour(h) { return "hsl(" + Math.round((h * 360) / H) + ",75%,42%)"; }
  data.layers.forEach(function (name, l) {
    var option = document.createElement("option");
    option.value = String(l);
    option.textContent = name;
    select.appendChild(option);
  });
  select.value = String(data.layer);
  for (var h = 0; h < H; h++) {
    var label = document.createElement("label"), box = document.createElement("input");
    var swatch = document.createElement("span");
    box.type = "checkbox";
    box.checked = data.heads === null || data.heads.indexOf(h) >= 0;
    box.id = root.id + "-head-" + h;
    swatch.className = "ds-attn-swatch";
    swatch.style.background = colour(h);
    label.htmlFor = box.id;
    label.append(box, swatch, "head " + h);
    root.querySelector(".ds-attn-heads").appendChild(label);
    box.addEventListener("change", draw);
    boxes.push(box);
  }
  function column(kind) {
    return data.tokens.map(function (token, i) {
      var text = document.createElementNS(NS, "text");
      text.textContent = token;
      text.setAttribute("class", "ds-attn-" + kind);
      text.setAttribute("y", TOP + i * ROW);
      svg.appendChild(text);
      return text;
    });
  }
  var queries = column("query"), keys = column("key");
  var width = Math.max.apply(null, queries.map(function (t, i) {
    return t.getComputedTextLength() || 7.5 * data.tokens[i].length;  // 0 while the panel is hidden
  }));
  var xq = PAD + width, xk = xq + GAP;
  queries.forEach(function (t) { t.setAttribute("x", xq); t.setAttribute("text-anchor", "end"); });
  keys.forEach(function (t) { t.setAttribute("x", xk); });
  svg.setAttribute("width", xk + width + PAD);
  svg.setAttribute("height", 2 * TOP + (T - 1) * ROW);
  function draw() {
    lines.replaceChildren();
    var W = data.weights[Number(select.value)];
    boxes.forEach(function (box, h) {
      if (!box.checked) return;
      for (var i = 0; i < T; i++) {
        if (focus !== null && i !== focus) continue;
        for (var j = 0; j < T; j++) {
          if (W[h][i][j] < 10) continue;  // per-mille: weights under 0.01 are not drawn
          var line = document.createElementNS(NS, "line");
          [["x1", xq + 6], ["y1", TOP + i * ROW], ["x2", xk - 6], ["y2", TOP + j * ROW], ["stroke", colour(h)],
           ["stroke-width", 2], ["stroke-opacity", W[h][i][j] / 1000], ["data-head", h], ["data-query", i],
           ["data-key", j]].forEach(function (a) { line.setAttribute(a[0], a[1]); });
          lines.appendChild(line);
        }
      }
    });
    queries.forEach(function (t, i) { t.classList.toggle("ds-attn-focus", i === focus); });
  }
  queries.forEach(function (t, i) {
    t.addEventListener("mouseenter", function () { if (!pinned) { focus = i; draw(); } });
    t.addEventListener("mouseleave", function () { if (!pinned) { focus = null; draw(); } });
    t.addEventListener("click", function () {
      pinned = !(pinned && focus === i);
      focus = pinned ? i : null;
      draw();
    });
  });
  select.addEventListener("change", draw);
  draw();
})();
"""


def head_view_html(
    tokens: Sequence[str],
    weights: np.ndarray,
    layers: Sequence[str],
    *,
    element_id: str = "attention-panel",
    layer: int = 0,
    heads: Sequence[int] | None = None,
) -> Markup:
    """An interactive head view: pick a layer and heads, hover or click a query token to see only its lines.

    Lines go from each query token (left) to each key token (right), one colour per head, with an
    opacity equal to the weight; weights are rounded to 3 decimals and those under 0.01 are not drawn.
    The fragment holds its own style and script and loads nothing; the host page must allow inline
    scripts. Its size is about 5 kB plus 3.5 bytes per weight: 6 layers × 12 heads × 16 tokens
    (18,432 weights) give 58–64 kB.

    Args:
        tokens: the ``T`` token strings (untrusted text: shown as text, never parsed as HTML).
        weights: ``(L, H, T, T)`` attention (layer, head, query, key), each row summing to 1.
        layers: the ``L`` layer names shown in the layer menu.
        element_id: the panel's DOM id, which prefixes its inner ids, so several panels can share a
            page; letters, digits, ``_`` and ``-`` only.
        layer: the layer shown first.
        heads: the heads ticked first (default: all).

    Returns:
        The panel's HTML, as :class:`markupsafe.Markup` (Jinja does not escape it again).

    Raises:
        ValueError: when ``element_id`` holds other characters, ``weights`` is not a non-empty 4-D
            ``(L, H, T, T)`` array of finite numbers, ``tokens`` / ``layers`` do not have ``T`` / ``L`` entries,
            or ``layer`` / ``heads`` are out of range.
    """
    if not _ELEMENT_ID.fullmatch(element_id):
        raise ValueError(f"element_id {element_id!r} is not valid: use one or more of A-Z, a-z, 0-9, '_' and '-'")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4 or w.shape[2] != w.shape[3] or 0 in w.shape:
        raise ValueError(
            f"weights must be a non-empty 4-D array (layers, heads, queries, keys) with as many queries as keys; "
            f"got shape {w.shape}"
        )
    if not np.isfinite(w).all():
        raise ValueError("weights hold NaN or infinite values; valid weights are finite, each row summing to 1")
    n_layers, _, n_tokens, _ = w.shape
    if len(tokens) != n_tokens:
        raise ValueError(f"got {len(tokens)} tokens for weights shaped {w.shape}: pass one per position ({n_tokens})")
    if len(layers) != n_layers:
        raise ValueError(f"got {len(layers)} layer names for weights shaped {w.shape}: pass one per layer ({n_layers})")
    n_heads = w.shape[1]
    if not 0 <= layer < n_layers or any(not 0 <= h < n_heads for h in heads or ()):
        raise ValueError(f"layer must be in 0..{n_layers - 1} and heads in 0..{n_heads - 1}; got {layer} and {heads}")
    data = {
        "layer": int(layer),
        "heads": None if heads is None else [int(h) for h in heads],
        "tokens": [str(t) for t in tokens],
        "layers": [str(name) for name in layers],
        "weights": np.rint(w * 1000).astype(np.int64).tolist(),  # per-mille: 3 decimals, fewer bytes
    }
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(_JSON_ESCAPES)
    return Markup(
        f'<div class="ds-attn" id="{element_id}"><style>{_STYLE}</style>'
        f'<div class="ds-attn-controls"><label>Layer <select id="{element_id}-layer"></select></label>'
        '<span class="ds-attn-heads"></span></div>'
        '<p class="ds-attn-hint">Hover a token on the left to see only its attention; click it to keep that view.</p>'
        '<svg role="img" aria-label="attention from query tokens (left) to key tokens (right)"><g></g></svg>'
        f'<script type="application/json">{payload}</script>'
        f'<script data-panel="{element_id}">{_SCRIPT}</script></div>'
    )
