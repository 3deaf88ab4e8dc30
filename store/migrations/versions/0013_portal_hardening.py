"""portal hardening: download coverage, sign-in throttling, share limits (issue 14.4/14.5)

Revision ID: 0013
Revises: 0012

Reserved in sequence so that work landing side by side keeps one linear history; a
revision that turned out to need no schema change stays a no-op.
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
