"""identity: patient identity checks (issue 14.1)

Revision ID: 0011
Revises: 0010

Reserved in sequence so that work landing side by side keeps one linear history; a
revision that turned out to need no schema change stays a no-op.
"""

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
