"""Placeholder: replaced by the attention panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="attention", title="attention", available=lambda reader: False, routes=())
