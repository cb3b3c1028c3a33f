"""Domain exceptions. Each names the file, row or field at fault; the CLI prints one line and exits non-zero."""


class AccreteError(Exception):
    """Base of every error caused by a user's input, data or store, as opposed to a bug."""


class DataContractError(AccreteError):
    """A Parquet file breaks the data contract: unreadable, a missing column, a type that cannot be coerced."""


class VocabularyError(AccreteError):
    """A saved vocabulary violates its invariants (damaged file) or an operation would break them."""


class StoreError(AccreteError):
    """The model store is missing, damaged, locked by another run, or asked for something it does not hold."""


class PartitionOrderError(AccreteError):
    """A partition was applied out of date order, or is missing."""


class ConfigError(AccreteError):
    """The configuration file or a setting is invalid."""
