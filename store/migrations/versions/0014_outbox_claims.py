"""outbox claims: outbox claims released at start (issue 16)

Revision ID: 0014
Revises: 0013

``notifications.claimed_by`` names the relay process that claimed a ``sending`` row
(``host:pid:start``, see :func:`delivery.outbox.process_identity`), so a row left
``sending`` by a relay that died (``kill -9`` mid-send) is released as soon as that
process is known to be gone, instead of after the long lease. On PostgreSQL the relay
also holds an advisory lock per row in flight (dropped with its connection); NULL means
claimed before this revision: only the lease brings such a row back.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=160), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("claimed_by")
