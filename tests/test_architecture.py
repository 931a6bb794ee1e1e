"""DESIGN §2: a module imports only from its own or lower layers; store, report and plots never import torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deepscope"

# module (relative dotted path without the package) -> layer; packages map their children.
LAYERS = {
    "__version__": 0,
    "errors": 0,
    "registry": 0,
    "_progress": 0,
    "_format": 0,
    "_tags": 0,
    "store": 1,
    "_store_schema": 1,
    "_store_writer": 1,
    "_store_lock": 1,
    "projection": 1,
    "_distributions": 2,
    "_distribution_summary": 1,
    "_distributed": 1,
    "export": 3,
    "layers": 1,
    "hooks": 1,
    "guard": 1,
    "targets": 1,
    "_loading": 1,
    "_images": 1,
    "repro": 2,
    "footprint": 2,
    "attribution": 2,
    "datasets": 1,
    "recorder": 3,
    "probes": 3,
    "_probe": 3,
    "_diagnosis": 3,
    "_checks_training": 3,
    "_checks_layers": 3,
    "_checks_data": 3,
    "diagnostics": 3,
    "_hashing": 1,
    "_manifest": 1,
    "_environment": 1,
    "receptive": 1,
    "_model_copy": 1,
    "_forward": 1,
    "layer_stats": 2,
    "scale": 2,
    "deconv": 2,
    "filter_bank": 2,
    "inspection": 2,
    "occlusion": 2,
    "robustness": 2,
    "_classification_metrics": 2,
    "_report_layers": 4,
    "evaluation": 2,
    "_cue_audit": 2,
    "_evaluation_record": 2,
    "_evaluation_cells": 2,
    "_evaluation_stream": 2,
    "_explanation_files": 1,
    "_report_scale": 4,
    "_report_health": 4,
    "_probe_readers": 4,
    "_scale_plots": 4,
    "_report_evaluation": 4,
    "_evaluation_plots": 4,
    "featurevis": 2,
    "_featurevis_plots": 4,
    "_report_featurevis": 4,
    "attention": 2,
    "text": 2,
    "_text_plots": 4,
    "_report_text": 4,
    "_report_repro": 4,
    "_attention_plots": 4,
    "_attention_panel": 4,
    "_report_attention": 4,
    "_layer_plots": 4,
    "_data": 1,
    "_finding_plots": 4,
    "_report_findings": 4,
    "_report_page": 4,
    "_report_attribution": 4,
    "integrations": 3,
    "health": 3,
    "residual": 3,
    "plots": 4,
    "_media": 4,
    "_plot_style": 4,
    "_decision_plots": 4,
    "_attribution_plots": 4,
    "_health_plots": 4,
    "report": 4,
    "demos": 5,
    "cli": 5,
    "server": 5,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return ".".join(rel.parts)


def _layer(module: str) -> int:
    top = module.split(".")[0]
    if top not in LAYERS:
        raise KeyError(f"module {module!r} has no layer in tests/test_architecture.py: add it")
    return LAYERS[top]


PRESENTATION = 4  # results may import plotting lazily, inside a function, to render themselves


def _imports(path: Path) -> dict[str, bool]:
    """Each deepscope module imported by ``path`` -> whether every import of it is function-local (lazy)."""
    tree = ast.parse(path.read_text())
    local_nodes = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
    }
    found: dict[str, bool] = {}

    def add(name: str, node: ast.AST) -> None:
        found[name] = found.get(name, True) and id(node) in local_nodes

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "deepscope":
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepscope."):
            add(node.module.removeprefix("deepscope."), node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("deepscope."):
                    add(alias.name.removeprefix("deepscope."), node)
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    module = _module_name(path).removesuffix(".__init__")
    own = _layer(module)
    for target, lazy in _imports(path).items():
        allowed = max(own, PRESENTATION) if lazy else own
        assert _layer(target) <= allowed, f"{module} (layer {own}) imports {target} (layer {_layer(target)})"


@pytest.mark.parametrize(
    "module", ["deepscope.store", "deepscope.report", "deepscope.plots", "deepscope.errors", "deepscope.diagnostics"]
)
def test_torch_free_modules(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dashboard_is_torch_free(tmp_path):
    pytest.importorskip("fastapi")
    code = (
        "import sys; from deepscope.server import create_app; from deepscope.server.panels import panels; "
        f"create_app({str(tmp_path)!r}); panels(); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_import_is_lazy():
    code = "import sys, deepscope; assert 'torch' not in sys.modules; assert deepscope.__version__"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves():
    import deepscope

    missing = [name for name in deepscope.__all__ if getattr(deepscope, name, None) is None]
    assert not missing, f"names in deepscope.__all__ that do not resolve: {missing}"
    assert deepscope.attribution.smooth is deepscope.smooth and callable(deepscope.datasets.shapes)


def test_public_names_are_not_shadowed_by_submodules():
    """Importing ``deepscope.x`` sets the package attribute ``x``: no public name may be a module's name."""
    code = (
        "import importlib, pkgutil, types, deepscope\n"
        "for info in pkgutil.iter_modules(deepscope.__path__):\n"
        "    if not info.ispkg and info.name != '__main__':\n"
        "        importlib.import_module('deepscope.' + info.name)\n"
        "bad = [n for n in deepscope._EXPORTS if isinstance(getattr(deepscope, n), types.ModuleType)]\n"
        "assert not bad, f'public names shadowed by modules: {bad}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
