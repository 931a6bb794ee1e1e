"""Placeholder: replaced by the footprint panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="footprint", title="footprint", available=lambda reader: False, routes=())
