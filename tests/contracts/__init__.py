"""Behaviour contracts shared by the implementations of one seam (run from tests/unit and
tests/integration against each implementation)."""
