"""portal hardening: download coverage, sign-in throttling, share limits (issue 14.4/14.5)

Revision ID: 0013
Revises: 0012

Reserved in sequence so that work landing side by side keeps one linear history; a
revision that turned out to need no schema change stays a no-op.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # -- portal work (14.5): per-account sign-in delay, download coverage ---------------
    with op.batch_alter_table("staff_users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("login_blocked_until", sa.DateTime(), nullable=True))
    op.create_table(
        "download_coverage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("part", sa.String(length=300), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("spans", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["portal_sessions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_id", "part"),
    )
    op.create_index(
        op.f("ix_download_coverage_session_id"), "download_coverage", ["session_id"], unique=False
    )
    # -- share work (14.4): the SMS breaker counts the last hour's attempts -------------
    op.create_index(
        op.f("ix_notification_attempts_started_at"),
        "notification_attempts",
        ["started_at"],
        unique=False,
    )


def downgrade() -> None:
    # -- share work (14.4) -------------------------------------------------------------
    op.drop_index(op.f("ix_notification_attempts_started_at"), table_name="notification_attempts")
    # -- portal work (14.5) ------------------------------------------------------------
    op.drop_index(op.f("ix_download_coverage_session_id"), table_name="download_coverage")
    op.drop_table("download_coverage")
    with op.batch_alter_table("staff_users", schema=None) as batch_op:
        batch_op.drop_column("login_blocked_until")
