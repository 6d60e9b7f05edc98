"""Create the documents and versions tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _timestamp() -> sa.Text:
    # SQLite has no timestamp type: SQLStorage stores ISO-8601 text in UTC ("...+00:00"),
    # which sorts in time order and reads back as an aware datetime.
    return sa.Text().with_variant(sa.DateTime(timezone=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dashpersist_documents",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("layout_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.Text(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "layout_id", name="pk_dashpersist_documents"),
    )
    op.create_table(
        "dashpersist_versions",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("layout_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.Text(), nullable=False),
        sa.Column("parent_checksum", sa.Text(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("change_type", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("device_id", sa.Text(), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("patch", sa.Text(), nullable=True),
        sa.Column("snapshot", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "layout_id", "version", name="pk_dashpersist_versions"),
    )
    op.create_index(
        "uq_dashpersist_versions_idempotency_key",
        "dashpersist_versions",
        ["user_id", "layout_id", "idempotency_key"],
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_dashpersist_versions_idempotency_key", table_name="dashpersist_versions")
    op.drop_table("dashpersist_versions")
    op.drop_table("dashpersist_documents")
