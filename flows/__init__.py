"""Prefect flows of the gvr pipeline: wiring from a workspace's dvc.yaml stages to Prefect tasks."""
