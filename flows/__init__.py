"""Prefect flows: the pipeline DAG and its schedules. No ML logic lives here; stages do the work."""
