"""Files and folders that operating systems add to folders and archives: never data.

macOS Finder's "Compress" puts an AppleDouble ``._<name>`` for every file under
``__MACOSX/`` and keeps each folder's ``.DS_Store``; copying to a FAT or exFAT drive
leaves ``._<name>`` beside the files; Windows Explorer writes ``Thumbs.db`` and
``desktop.ini``. :func:`is_platform_metadata` is the one rule the data layer uses to
leave them out: extraction does not write them, packing a folder does not pack them,
and the layout readers and ``bench data add`` do not see them as classes or images.
"""

from __future__ import annotations

from pathlib import PurePath, PurePosixPath

# Compared case-insensitively: the file systems that write them ignore case.
_FOLDERS = frozenset(
    n.casefold()
    for n in (
        "__MACOSX",  # Finder's zip: AppleDouble files of every member
        ".AppleDouble",  # netatalk / AFP shares
        ".Spotlight-V100",
        ".Trashes",
        ".fseventsd",
        ".TemporaryItems",
        "$RECYCLE.BIN",
        "System Volume Information",
    )
)
_FILES = frozenset(
    n.casefold()
    for n in (".DS_Store", "Icon\r", "Thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini")
)
DESCRIPTION = "__MACOSX/, ._*, .DS_Store, Thumbs.db, desktop.ini"  # for messages


def is_platform_metadata(path: str | PurePath) -> bool:
    """True when any component of ``path`` (relative, ``/``-separated for strings) is one
    of the platform's metadata names: a folder above, or the file itself."""
    parts = PurePosixPath(path).parts if isinstance(path, str) else path.parts
    for part in parts:
        name = part.casefold()
        if name in _FOLDERS or name in _FILES or name.startswith("._"):
            return True
    return False
