"""Placeholder: replaced by the featurevis panel."""

from deepscope.server.panels import Panel

PANEL = Panel(name="featurevis", title="featurevis", available=lambda reader: False, routes=())
