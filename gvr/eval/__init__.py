"""Metrics, evaluation runner, baselines and plots."""
