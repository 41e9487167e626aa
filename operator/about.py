"""The operator component."""
