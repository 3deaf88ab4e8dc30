"""reminders and access: a link's reminder, the patient's extension, share emails

Revision ID: 0019
Revises: 0018

- ``grants.reminded_at``: when the one reminder before expiry was queued
  (:mod:`delivery.reminders`); the conditional UPDATE that sets it is the claim, so two
  nodes (or a restart) never queue a second one.
- ``grants.extended_at``: when the patient extended their own link
  (``delivery.patient_extend_days``, once; :mod:`portal.extend`).
- ``grants.extension_asked_at``: when the patient last asked staff for more time
  (at most one staff alert a day per link).
- ``grants.notify_every_access``: for a clinician's share, whether the patient is
  emailed at every opening (the default, as before) or only the first.

The access history reads the audit trail (``audit_events``: sign-ins, wrong codes,
downloads, views), which already names the grant as the actor: no table of its own.
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reminded_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("extended_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("extension_asked_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "notify_every_access",
                sa.Boolean(),
                nullable=False,
                server_default=sa.true(),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_column("notify_every_access")
        batch_op.drop_column("extension_asked_at")
        batch_op.drop_column("extended_at")
        batch_op.drop_column("reminded_at")
