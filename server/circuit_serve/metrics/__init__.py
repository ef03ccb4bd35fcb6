"""Prometheus metrics: one class per component, each taking the one registry passed in."""
