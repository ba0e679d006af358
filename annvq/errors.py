"""Exceptions raised by annvq. All derive from ``AnnvqError`` so callers can catch one type."""


class AnnvqError(Exception):
    """Base class for every error annvq raises on purpose."""


class InvalidInputError(AnnvqError, ValueError):
    """An input array or argument is malformed (dtype, shape, NaN/inf, empty, k <= 0)."""


class DimensionError(InvalidInputError):
    """A vector batch does not have the dimension the index or codec was built for."""


class NotTrainedError(AnnvqError, RuntimeError):
    """The codec or index must be trained before this operation."""


class UnknownIdError(AnnvqError, KeyError):
    """One or more external ids are not present in the index."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown id"


class DuplicateIdError(InvalidInputError):
    """An external id given to ``add`` is already present (or repeated within the batch)."""


class FormatError(AnnvqError, OSError):
    """A file is not a valid annvq index (foreign, truncated, corrupt or a newer format)."""


class SpecError(InvalidInputError):
    """An index specification string or model is invalid."""


class DependencyError(AnnvqError, ImportError):
    """An optional dependency needed for this operation is not installed (e.g. JAX for training QINCo)."""


class ShardUnavailableError(AnnvqError, RuntimeError):
    """A shard of a sharded index has no live replica: the request is refused rather than answered in part
    (a service answers 503)."""


class ClusterError(AnnvqError, ConnectionError):
    """The compute cluster cannot be reached or used (bad scheduler address, no workers, timeout)."""
