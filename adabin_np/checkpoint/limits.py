"""Resource limits shared by all readers, and the byte budget behind ``max_bytes``.

Every limit is checked *before* the work or memory it bounds is spent:

* ``max_bytes`` -- total **decoded bytes**: the size of every returned array plus the size of
  every tensor storage that had to be copied or decompressed out of the file (zip members,
  ``.npy`` payloads; a zip's ``data.pkl`` counts twice, it is copied once more), and the
  ``bytes`` objects a pickle builds with ``_codecs.encode``. Default ``max(128 MiB, 4 * file size)``: a genuine uncompressed
  checkpoint decodes to about twice its size, while a few bytes of deflate or a broadcast
  (stride-0) view cannot make the loader allocate gigabytes unasked (and decompressing
  64 MiB and copying it stays within about a second). Pass a larger value for
  highly compressed ``.npz`` files or broadcast-heavy checkpoints.
* ``max_ops`` -- pickle opcodes per file (all pickles of a legacy file together), 500,000,
  with calls and sets weighted (see :mod:`.pickle_vm`). ``torch.save`` spends about 60
  weighted opcodes per tensor (a model of 2,000 parameter tensors saved with its Adam
  state, 6,000 tensors in all: 363,000), so this admits ~8,000 tensors while bounding the pure-Python VM's time (0.2 s
  for the most expensive opcode mix on the 2-core development VM, ~1 s when it is heavily
  loaded) and memory (well under 100 MB).
  The opcode count is also the object count and bounds every container's size: each element
  of a list, tuple, dict or set costs at least one opcode.
* ``max_depth`` -- MARK nesting and tuple-in-tuple nesting, 1,000.
* ``max_members`` -- zip members (torch zip, ``.npz``) and safetensors entries, 10,000: the
  per-member work (a zip directory entry, an ``.npy`` header, a JSON entry) costs up to
  ~100 microseconds in Python, and a 10 MB archive could otherwise hold 200,000 of them.
* ``max_equal_hashes`` -- dict keys / set elements of one container that share one hash value,
  32 (Python dicts degrade quadratically on equal hashes; genuine files have none).
* ``max_key_items`` -- elements of a tuple used as a dict key or set element, 16.
* ``max_ndim`` -- tensor dimensions, 32; ``max_safetensors_header`` -- 100,000,000 bytes (the
  limit of the reference implementation).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import CheckpointError

MIN_DEFAULT_MAX_BYTES = 128 * 2**20
DEFAULT_BYTES_PER_FILE_BYTE = 4


@dataclass(frozen=True)
class Limits:
    """The limits of one load (see the module docstring for their meaning and defaults)."""

    max_bytes: int
    max_ops: int = 500_000
    max_depth: int = 1000
    max_members: int = 10_000
    max_equal_hashes: int = 32
    max_key_items: int = 16
    max_ndim: int = 32
    max_safetensors_header: int = 100_000_000


def default_max_bytes(file_size: int) -> int:
    """``max(128 MiB, 4 * file_size)``: the documented default of ``load_checkpoint``."""
    return max(MIN_DEFAULT_MAX_BYTES, DEFAULT_BYTES_PER_FILE_BYTE * file_size)


class ByteBudget:
    """Running total of decoded bytes; ``take`` refuses before the caller allocates."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or self.used + nbytes > self.max_bytes:
            raise CheckpointError(
                f"{what} would bring the decoded size to {self.used + nbytes} bytes, over "
                f"max_bytes={self.max_bytes} (pass a larger max_bytes to load_checkpoint if "
                "the file is trusted to be this large)")
        self.used += nbytes
