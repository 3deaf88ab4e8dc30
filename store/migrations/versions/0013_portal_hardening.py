"""portal hardening: download coverage, sign-in throttling, share limits (issue 14.4/14.5)

Revision ID: 0013
Revises: 0012

Reserved in sequence so that work landing side by side keeps one linear history; a
revision that turned out to need no schema change stays a no-op.
"""

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
