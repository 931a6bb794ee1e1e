"""Placeholder: replaced by the health panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="health", title="health", available=lambda reader: False, routes=())
