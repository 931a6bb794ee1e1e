"""Placeholder: replaced by the representation panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="representation", title="representation", available=lambda reader: False, routes=())
