"""The one exception every checkpoint reader raises for a file it will not load."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is malformed, unsupported, over a limit, or asks for something refused.

    Raised by :func:`adabin_np.load_checkpoint` with the file's path in the message. It
    subclasses ``ValueError`` so that ``except ValueError`` catches every bad-file case.
    """
