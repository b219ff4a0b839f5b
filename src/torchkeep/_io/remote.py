"""Remote (fsspec) byte transfer: parallel ranged reads into tensor memory, streaming uploads.

Reads (:class:`RangeReader`): a load asks for many tensors at known offsets. Adjacent
tensors are coalesced into large byte ranges (a larger tensor is split into several) and up
to ``TORCHKEEP_REMOTE_THREADS`` (default 8) ranges are fetched at once. A range is the load's
size divided by the number of threads, between 8 and 64 MiB (``TORCHKEEP_REMOTE_RANGE_SIZE``
fixes it instead). On S3 (s3fs) the
ranges are concurrent ``GET`` requests on s3fs's event loop, pinned to the ETag seen at
open (``If-Match``, so an object replaced mid-read is an error rather than a mix of two
versions), and each response body is copied chunk by chunk straight into the destination
tensors' memory: no whole-range or whole-file buffer exists. Other fsspec filesystems get
the same ranges through ``cat_file(start, end)`` on a small thread pool. A range that comes
back short (the object is shorter than its header says, or was truncated meanwhile) raises
:class:`~torchkeep.errors.CorruptCheckpointError` naming the URL; a body that breaks off is
fetched again (twice), then :class:`RemoteIOError`. Small reads (headers, zip records, formats
that read one small tensor at a time) are served from cached 1 MiB blocks, so they cost one
request per block rather than one per read.

Writes (:class:`MultipartWriter`, S3 only; other filesystems use their own ``open("wb")``):
bytes are packed into parts of ``TORCHKEEP_REMOTE_PART_SIZE`` (16 MiB by default, at least
S3's 5 MiB; doubled every 1000 parts so S3's 10,000-part limit is never reached) and each
full part is uploaded (``UploadPart``) while the next one fills, with at most
``TORCHKEEP_REMOTE_UPLOADS`` (default 4) parts in flight. Peak memory is therefore about
``(uploads + 1) * part_size`` whatever the file size. The object becomes visible only when
:meth:`MultipartWriter.close` completes the upload; :meth:`MultipartWriter.discard` aborts
it (no partial object, no orphaned parts). A file smaller than one part is one ``PutObject``.
"""


from __future__ import annotations

from ._remote_base import RemoteIOError, is_s3, settings
from .remote_read import RangeReader, plan_ranges, range_for
from .remote_write import MultipartWriter, open_writer

__all__ = ["RangeReader", "MultipartWriter", "RemoteIOError", "open_writer", "is_s3", "plan_ranges", "range_for", "settings"]
