"""A provider template: copy this folder to start a new venue (docs/providers/README.md)."""
