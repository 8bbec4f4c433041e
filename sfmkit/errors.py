"""Exceptions that mean "the user can fix this".

The CLI prints them as one clear line (no traceback) and exits with status 2. Anything else
that escapes is a bug in sfmkit and keeps its traceback.
"""

from __future__ import annotations


class SfmkitError(Exception):
    """A problem with the user's input, files or options; the message says what to do."""


class ImageReadError(SfmkitError):
    """An image file could not be decoded."""


class ConfigError(SfmkitError):
    """A configuration is invalid, or an existing output was made with another one."""


class DamagedFileError(SfmkitError):
    """An item of a stage file failed to read (a checksum or a damaged structure); the item
    is noted so that the stage that wrote the file recomputes it on its next run."""
