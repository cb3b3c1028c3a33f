"""Accrete's TensorFlow side: the frozen-tail embedding table, row initializers and the TFRS matrix-factorization model.

`models` knows TensorFlow and numpy only: no files beyond TF checkpoints, no Prefect.
"""
import os

# tf-keras (Keras 2) is what TensorFlow Recommenders 0.7.7 needs; this must be set before TensorFlow is
# imported anywhere. A value the user set is respected.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The options the models accept, named once, here, where importing them loads no TensorFlow (the configuration
# validates its settings against them).
#: The SGD objectives of `models.mf.MatrixFactorization` (iALS, `models.ials`, is the pipeline's default).
SGD_OBJECTIVES = ("retrieval", "rating")
#: What a bias table does with the rows of a frozen block (`models.embedding.bias_trainable_from`).
BIAS_POLICIES = ("frozen", "trainable")
#: How `models.initializers.initialize_rows` fills appended rows.
INIT_STRATEGIES = ("normal", "mean", "metadata", "fold_in", "uniform")


def quiet_tensorflow():
    """Import TensorFlow without its native start-up chatter and return the module.

    TensorFlow's C++ side writes INFO lines (oneDNN, CUDA probes) straight to stderr before absl logging
    is initialized, so no environment variable silences them; file descriptor 2 is pointed at /dev/null
    for the import only (Python exceptions still propagate). Its Python logger is set to ERROR: Keras'
    retracing warnings are expected when a nightly run builds one model per step.
    """
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow
