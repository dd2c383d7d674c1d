"""Training entry points (`python -m patchscaler.train.<module>`)."""
