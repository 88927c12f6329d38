"""Conduit's benchmark harness: relays side by side on one machine (see README.md)."""
