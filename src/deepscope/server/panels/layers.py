"""Placeholder: replaced by the layers panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="layers", title="layers", available=lambda reader: False, routes=())
