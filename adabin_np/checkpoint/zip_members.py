"""Reading zip archives (torch zip checkpoints and ``.npz``) without trusting their headers.

* At most ``max_members`` members; names must be unique (a duplicate would make the archive
  mean two things).
* Only ``ZIP_STORED`` and ``ZIP_DEFLATED`` members are read: deflate cannot expand by more
  than 1032:1, and ``zipfile`` decompresses it in bounded steps; bzip2/lzma members, which
  ``zipfile`` decompresses in unbounded steps, and encrypted members are refused.
* A member's *declared* size is checked -- against the size the caller expects, a per-record
  limit, the 1032:1 ratio and the :class:`~.limits.ByteBudget` -- before any buffer is
  allocated; the member is then stream-decompressed into that buffer in 1 MiB steps, and
  ``zipfile`` cannot produce more than the declared size. A short member or a CRC mismatch
  is a ``CheckpointError``.
"""
from __future__ import annotations

import io
import zipfile
import zlib

from .errors import CheckpointError
from .limits import ByteBudget

DEFLATE_MAX_RATIO = 1032
_CHUNK = 2**20


def open_zip(data: bytes, max_members: int) -> zipfile.ZipFile:
    # Every central directory entry starts with this signature: counting it (at C speed) is an
    # upper bound on the members zipfile would parse, at about 15 us each, in Python.
    if data.count(b"PK\x01\x02") > max_members:
        raise CheckpointError(f"zip archive has more than {max_members} members "
                              "(max_members)")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError,
            EOFError, OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt zip archive ({str(exc)[:200]})") from None
    names = [info.filename for info in zf.infolist()]
    if len(set(names)) != len(names):
        raise CheckpointError("zip archive holds two members with the same name")
    return zf


def check_member(info: zipfile.ZipInfo) -> None:
    """Refuse members this module will not decompress (see the module docstring)."""
    if info.flag_bits & 0x1:
        raise CheckpointError(f"zip member {info.filename!r:.80} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"zip member {info.filename!r:.80} uses compression method "
                              f"{info.compress_type} (only stored and deflate are read)")
    if (info.compress_type == zipfile.ZIP_DEFLATED
            and info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 1024):
        raise CheckpointError(f"zip member {info.filename!r:.80} claims an impossible "
                              "compression ratio")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise CheckpointError(f"stored zip member {info.filename!r:.80} has inconsistent "
                              "sizes")


def read_member(zf: zipfile.ZipFile, name: str, *, size: int | None = None,
                limit: int | None = None, budget: ByteBudget | None = None) -> bytearray:
    """The bytes of member ``name``, refused before allocation if over any bound."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"zip archive lacks the record {name!r:.80}") from None
    check_member(info)
    if size is not None and info.file_size != size:
        raise CheckpointError(f"record {name!r:.80} holds {info.file_size} bytes, "
                              f"expected {size}")
    if limit is not None and info.file_size > limit:
        raise CheckpointError(f"record {name!r:.80} is too large ({info.file_size} bytes, "
                              f"at most {limit})")
    if budget is not None:
        budget.take(info.file_size, f"record {name!r:.80}")
    out = bytearray(info.file_size)
    view = memoryview(out)
    filled = 0
    try:
        with zf.open(info) as member:
            while filled < len(out):
                chunk = member.read(min(_CHUNK, len(out) - filled))
                if not chunk:
                    break
                view[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
            if filled == len(out):
                member.read(1)  # reaches EOF: zipfile checks the CRC there
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
            NotImplementedError) as exc:
        raise CheckpointError(f"zip record {name!r:.80} is corrupt ({str(exc)[:200]})") \
            from None
    if filled != len(out):
        raise CheckpointError(f"zip record {name!r:.80} is truncated")
    return out
