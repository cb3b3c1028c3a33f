"""Accrete's TensorFlow side: the frozen-tail embedding table, row initializers and the TFRS matrix-factorization model.

`models` knows TensorFlow and numpy only: no files beyond TF checkpoints, no Prefect.
"""
import os

# tf-keras (Keras 2) is what TensorFlow Recommenders 0.7.7 needs; this must be set before TensorFlow is
# imported anywhere. A value the user set is respected.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
