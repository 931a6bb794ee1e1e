"""Placeholder: replaced by the attributions panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="attributions", title="attributions", available=lambda reader: False, routes=())
