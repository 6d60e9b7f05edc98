"""Create the activity log and widget data cache tables.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _timestamp() -> sa.Text:
    # As in 0001: SQLite has no timestamp type, so times are ISO-8601 text in UTC at a fixed
    # precision ("...+00:00"), which sorts and compares in time order.
    return sa.Text().with_variant(sa.DateTime(timezone=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dashpersist_activity",
        # The cursor of `get_activity` pagination. AUTOINCREMENT on SQLite: ids are never
        # reused, even after the newest rows are deleted, so an old cursor never points
        # into newer entries.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("layout_id", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("device_id", sa.Text(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_dashpersist_activity_user_id_id", "dashpersist_activity", ["user_id", "id"])
    op.create_table(
        "dashpersist_widget_cache",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("widget_id", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("stored_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "widget_id", name="pk_dashpersist_widget_cache"),
    )
    op.create_index(
        "ix_dashpersist_widget_cache_expires_at", "dashpersist_widget_cache", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_dashpersist_widget_cache_expires_at", table_name="dashpersist_widget_cache")
    op.drop_table("dashpersist_widget_cache")
    op.drop_index("ix_dashpersist_activity_user_id_id", table_name="dashpersist_activity")
    op.drop_table("dashpersist_activity")
