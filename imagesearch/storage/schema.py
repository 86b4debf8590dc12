"""SQLAlchemy 2.0 typed schema of the catalog."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class FsPath(TypeDecorator[Path]):
    """A filesystem path stored as its OS bytes.

    Linux file names need not be UTF-8; storing ``os.fsencode`` bytes keeps every
    name reversible, and byte order makes "everything under this folder" a range.
    """

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return os.fsencode(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Path | None:
        if value is None:
            return None
        return Path(os.fsdecode(bytes(value)))


class Base(DeclarativeBase):
    pass


class FolderRow(Base):
    __tablename__ = "folders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[Path] = mapped_column(FsPath, unique=True, nullable=False)
    watched: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    online: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    added_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    last_scan: Mapped[datetime | None] = mapped_column(DateTime)

    photos: Mapped[list[PhotoRow]] = relationship(
        back_populates="folder", cascade="all, delete-orphan", passive_deletes=True
    )


class PhotoRow(Base):
    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    folder_id: Mapped[int] = mapped_column(
        ForeignKey("folders.id", ondelete="CASCADE"), nullable=False, index=True
    )
    path: Mapped[Path] = mapped_column(FsPath, unique=True, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    mtime: Mapped[float] = mapped_column(Float, nullable=False)
    content_hash: Mapped[str | None] = mapped_column(String(32), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    captured_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending", index=True)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)

    folder: Mapped[FolderRow] = relationship(back_populates="photos")


class EmbeddingRow(Base):
    """One photo's vector for one model (float16 bytes, L2-normalised before rounding)."""

    __tablename__ = "embeddings"

    photo_id: Mapped[int] = mapped_column(
        ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)

    __table_args__ = (Index("ix_embeddings_model", "model"),)


class VectorCodecRow(Base):
    """A compact library's product quantiser for one model (core/vector_codec.py).

    While a model has one, every vector stored for it is ``code_size`` bytes of codes
    made with it, not float16.
    """

    __tablename__ = "vector_codecs"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    code_size: Mapped[int] = mapped_column(Integer, nullable=False)
    # Names ``data`` (BLAKE2b-128): readers compare it, not the half megabyte of codec.
    digest: Mapped[str] = mapped_column(String(32), nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class LocalFeatureRow(Base):
    """One photo's local features from one extractor (see core/feature_codec for the bytes).

    ``content_hash`` is the photo's hash when the features were computed: a record whose
    hash differs from the photo's current one is stale and never used.
    """

    __tablename__ = "local_features"

    photo_id: Mapped[int] = mapped_column(
        ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True
    )
    extractor: Mapped[str] = mapped_column(String(96), primary_key=True)
    content_hash: Mapped[str | None] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(Integer, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)

    __table_args__ = (Index("ix_local_features_extractor", "extractor"),)


class MetaRow(Base):
    """Key/value facts about the catalog, such as its generation counter."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
