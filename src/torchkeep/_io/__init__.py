"""Bytes on disk: filesystems (fsspec), atomic commit, fast reads/writes, checksums."""
