"""Placeholder: replaced by the evaluation panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="evaluation", title="evaluation", available=lambda reader: False, routes=())
