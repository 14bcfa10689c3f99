"""Builders: container images and Julia package bundles (plain Python, no Prefect)."""
