"""Helpers shared by test packages (real services the tests start themselves)."""
