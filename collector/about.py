"""The collector component."""
