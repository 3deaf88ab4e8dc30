"""request events index: the reports read request events by state and time

Revision ID: 0016
Revises: 0015

``courier report`` and the staff Reports page (``release.report``) read the period's
request events by the state they moved to; without an index on ``(to_state, at)`` each
report scans the whole table (100,000 requests, 500,000 events on SQLite: 30 days
0.25 s without it, 0.08 s with it).
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_request_events_to_state_at", "request_events", ["to_state", "at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_request_events_to_state_at", table_name="request_events")
