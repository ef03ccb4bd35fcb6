"""Config dataclasses: the only code that reads command-line flags and environment."""
