"""outbox claims: outbox claims released at start (issue 16)

Revision ID: 0014
Revises: 0013

Reserved in sequence so that work landing side by side keeps one linear history; a
revision that turned out to need no schema change stays a no-op.
"""

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
