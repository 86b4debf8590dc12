"""Local features per photo and extractor, for instance search.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "local_features",
        sa.Column(
            "photo_id",
            sa.Integer,
            sa.ForeignKey("photos.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("extractor", sa.String(96), primary_key=True),
        sa.Column("content_hash", sa.String(32)),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_local_features_extractor", "local_features", ["extractor"])


def downgrade() -> None:
    op.drop_index("ix_local_features_extractor", "local_features")
    op.drop_table("local_features")
