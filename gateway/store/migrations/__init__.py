"""Versioned schema migrations for the store backends that keep them outside their module."""
