"""Accrete's orchestration: Prefect flows and deployments, and the `accrete` command line.

Flows hold no maths; they call plain functions in `pipeline`. Prefect is imported lazily so that
`accrete --help` and the light commands stay fast.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
