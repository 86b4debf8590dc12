"""Typed errors raised by core, storage and services; front ends turn them into messages."""

from __future__ import annotations


class ImageSearchError(Exception):
    """Base of every error the app raises on purpose; the message is for people."""


class ModelUnavailable(ImageSearchError):
    """Model weights are not on disk and cannot be downloaded right now."""


class InvalidModelId(ImageSearchError, ValueError):
    """A model id is not of the form ARCH/TAG."""


class ModelFileError(ImageSearchError):
    """A file given to install a model is missing or cannot be read."""


class ModelLoadError(ImageSearchError):
    """Weights are present but could not be loaded (corrupt file, wrong architecture)."""


class ChecksumMismatch(ImageSearchError):
    """A downloaded or installed file does not match its expected checksum."""


class CatalogTooNew(ImageSearchError):
    """The catalog was written by a newer imagesearch than this one."""


class CatalogError(ImageSearchError):
    """The catalog database cannot be opened or migrated."""


class VectorKindChanged(CatalogError):
    """A batch of vectors was prepared as float16 or as codes, and the library has been
    coded (or made standard again) since: prepare it again."""


class ImageDecodeError(ImageSearchError):
    """A file could not be read as an image; the message says why."""


class IndexFileError(ImageSearchError):
    """The on-disk vector index is missing, stale or unreadable."""


class IndexUnavailableError(IndexFileError):
    """An index file that is fine cannot be opened now (another process held its lock
    too long, or there is not enough memory): try later, never rebuild it for that."""


class FolderError(ImageSearchError):
    """A folder cannot be added or read."""


class QueryError(ImageSearchError):
    """The query is empty or cannot be used."""


class FeatureDataError(ImageSearchError):
    """A stored local-feature record is damaged or unusable; it is recomputed."""


class InstallationError(ImageSearchError):
    """A file that ships with imagesearch is missing or damaged: reinstall it."""
