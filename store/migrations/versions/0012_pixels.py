"""pixels: declared pixel sizes and bounded rendering (issue 14.2)

Revision ID: 0012
Revises: 0011

Reserved in sequence so that work landing side by side keeps one linear history; a
revision that turned out to need no schema change stays a no-op.
"""

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
