"""The analyser component."""
