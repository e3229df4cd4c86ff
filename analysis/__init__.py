"""Robustness analysis, reports and exports from what MLflow recorded."""
