"""disc jobs: the CD/ISO fallback's burn queue

Revision ID: 0009
Revises: 0008

One open job per request is the database's to enforce: a partial unique index on
``request_id`` over the rows neither burned nor cancelled. SQLite (3.8+) and PostgreSQL
both have partial indexes with the same WHERE syntax, so the same rule holds on both.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OPEN = "burned_at IS NULL AND cancelled_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "disc_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("why", sa.String(length=16), nullable=False),
        sa.Column("queued_at", sa.DateTime(), nullable=False),
        sa.Column("queued_by", sa.String(length=200), nullable=False),
        sa.Column("image_path", sa.String(length=300), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("image_size", sa.BigInteger(), nullable=True),
        sa.Column("written_at", sa.DateTime(), nullable=True),
        sa.Column("writing_since", sa.DateTime(), nullable=True),
        sa.Column("burned_at", sa.DateTime(), nullable=True),
        sa.Column("burned_by", sa.String(length=200), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(), nullable=True),
        sa.Column("cancelled_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "why IN ('staff', 'failed', 'overdue', 'unopened')", name="ck_disc_jobs_why"
        ),
        sa.CheckConstraint("burned_at IS NULL OR cancelled_at IS NULL", name="ck_disc_jobs_closed"),
        sa.ForeignKeyConstraint(["request_id"], ["release_requests.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_disc_jobs_request_id"), "disc_jobs", ["request_id"], unique=False)
    op.create_index(op.f("ix_disc_jobs_queued_at"), "disc_jobs", ["queued_at"], unique=False)
    op.create_index(
        "ux_disc_jobs_open",
        "disc_jobs",
        ["request_id"],
        unique=True,
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )


def downgrade() -> None:
    op.drop_index("ux_disc_jobs_open", table_name="disc_jobs")
    op.drop_index(op.f("ix_disc_jobs_queued_at"), table_name="disc_jobs")
    op.drop_index(op.f("ix_disc_jobs_request_id"), table_name="disc_jobs")
    op.drop_table("disc_jobs")
