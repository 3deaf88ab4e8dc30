"""api keys: staff API keys in the database (issue 11)

Revision ID: 0015
Revises: 0014

``api_keys`` holds the SHA-256 digest of every key made by ``courier apikey create`` or
the staff Keys page (never the key), its label, who made it and when, when it was last
used (written at most once a minute per key) and when and by whom it was revoked. Every
process looks a presented key up here on each API call, so a new or revoked key takes
effect at once without a restart (:class:`portal.apikeys.KeyRing`).
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=80), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False, server_default=""),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(length=80), nullable=True),
    )
    op.create_index("ix_api_keys_digest", "api_keys", ["digest"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_api_keys_digest", table_name="api_keys")
    op.drop_table("api_keys")
