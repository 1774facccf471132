"""Presets with other libraries' names, defaults and numbers."""
