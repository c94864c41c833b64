"""Helpers shared by tests: real processes (an MLflow server) started and stopped by id."""
