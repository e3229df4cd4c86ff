"""Declarative search spaces, one YAML file per family."""
