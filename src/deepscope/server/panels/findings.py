"""Placeholder: replaced by the findings panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="findings", title="findings", available=lambda reader: False, routes=())
