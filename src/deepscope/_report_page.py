"""The HTML page of a report: sections of escaped text, tables and inlined figures, written atomically.

Layer 4. :mod:`deepscope.report` builds the sections from run stores; the CLI's explain page uses
the same page. Every string is escaped by the template (autoescape); images are inlined as data
URIs, so the page is one self-contained file. A section's widgets are HTML fragments built (and
escaped) by deepscope, e.g. the attention panel; the page's Content-Security-Policy lets exactly
their inline scripts run, by hash, and nothing else (no other script, no network).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from markupsafe import Markup

__all__ = ["Figure", "Section", "runs_holding", "slug", "write_page"]

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*application/json)[^>]*>(.*?)</script>", re.DOTALL)  # code, not data
_MIME = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4"}


@dataclass(frozen=True)
class Figure:
    """An image (PNG/GIF) inlined in a page, with its caption and optional files offered beside the page."""

    path: Path
    caption: str
    downloads: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Section:
    """One titled block of a page: paragraphs (escaped), an optional table (first row = header), figures."""

    anchor: str
    title: str
    paragraphs: tuple[str, ...]  # trusted static text written here, escaped anyway
    figures: tuple[Figure, ...] = ()
    table: tuple[tuple[str, ...], ...] = ()  # first row is the header
    notes: tuple[str, ...] = field(default=())
    widgets: tuple[Markup, ...] = ()  # trusted HTML fragments (e.g. an attention panel), not escaped again


def slug(text: str) -> str:
    """``text`` with every character that is not a letter or digit replaced by ``_`` (an anchor, a file name)."""
    return "".join(c if c.isalnum() else "_" for c in text) or "root"


def runs_holding(readers: Iterable[Any], key: str) -> Iterator[tuple[Any, dict[str, Any], str]]:
    """``(reader, meta, slug of the run name)`` for each run whose meta holds ``key``: the runs a section draws."""
    for reader in readers:
        meta = reader.meta()
        if key in meta:
            yield reader, meta, slug(reader.info.name)


def _data_uri(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{_MIME[path.suffix]};base64,{data}"


def write_page(
    out_file: str | os.PathLike[str], title: str, sections: Sequence[Section], run_dirs: Sequence[Path] = ()
) -> Path:
    """Render ``sections`` into one self-contained HTML file (images inlined, strings escaped), atomically."""
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(_render(title, sections, run_dirs, out.parent), encoding="utf-8")
    os.replace(tmp, out)
    return out


def _script_hashes(sections: Sequence[Section]) -> str:
    """The CSP sources allowing exactly the widgets' inline scripts (``'sha256-…'`` each); no other script runs."""
    scripts = {m.group(1) for s in sections for w in s.widgets for m in _INLINE_SCRIPT.finditer(str(w))}
    digests = (base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode("ascii") for code in scripts)
    return " ".join(sorted(f"'sha256-{d}'" for d in digests))


def _render(title: str, sections: Sequence[Section], run_dirs: Sequence[Path], base: Path) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("deepscope", "templates"), autoescape=select_autoescape(default=True))
    env.filters["data_uri"] = _data_uri
    from deepscope import __version__

    return env.get_template("report.html").render(
        script_hashes=_script_hashes(sections),
        title=title,
        sections=sections,
        runs=[str(d) for d in run_dirs],
        version=__version__,
        generated=datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        relative=lambda p: os.path.relpath(p, base),
    )
