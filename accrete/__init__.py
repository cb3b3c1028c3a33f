"""Accrete: incremental item embeddings for matrix-factorization recommenders.

One installable package. Its sub-packages are the repository's top-level folders (the layout the project
fixes): `accrete.pipeline` (files, Parquet, the store, training steps), `accrete.models` (the maths:
TensorFlow/TFRS layers, iALS) and `accrete.flows` (Prefect flows and the `accrete` CLI). In a checkout they are
reached through the links `accrete/pipeline -> ../pipeline` etc.; an installed wheel holds them as ordinary
sub-packages.
"""
