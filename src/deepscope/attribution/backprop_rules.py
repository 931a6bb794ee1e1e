"""Placeholder: filled by the attribution work in progress."""
