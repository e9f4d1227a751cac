"""modelfs: a deduplicating, losslessly compressing store for model weights, served by a read-only FUSE mount.

The public surface is the store API; the CLI (``modelfs.cli``) and the FUSE adapter (``modelfs.fuse_ops``) are
thin layers over it.
"""

from .errors import IntegrityError, ModelfsError
from .store import Store
from .tree import DirEntry, FileEntry, Tree

__all__ = ["DirEntry", "FileEntry", "IntegrityError", "ModelfsError", "Store", "Tree"]
