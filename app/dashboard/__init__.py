"""Shared pieces of the Neuroscope dashboard: the sidebar selection, charts and views."""
