"""Accrete's data side: Parquet ingest, vocabularies, the versioned store, evaluation, drift and publishing.

`pipeline` knows files and calls `models` for anything TensorFlow; nothing here imports Prefect.
"""
import os

# tf-keras (Keras 2) is what TensorFlow Recommenders 0.7.7 needs; this must be set before TensorFlow is
# imported anywhere. A value the user set is respected.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
