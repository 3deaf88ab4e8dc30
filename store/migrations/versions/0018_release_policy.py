"""release policy: a ready request's hold (an embargo, the wait for the final report)

Revision ID: 0018
Revises: 0017

``release_requests`` gains the hold that the release policy (a rule's ``release:``
block, or node.yaml's ``delivery.release``) puts on a ready request (issue 13):
``hold_kind`` ("" none, ``embargo`` until a time, ``report`` waiting for the final
report, ``staff`` held by staff, until a time or until released), ``hold_until`` (the
embargo's end; for ``report``, when the wait runs out) and ``hold_checked_at`` (when the
policy was applied; NULL: not yet), and ``tell_patient_when`` (staff asked at request
time that the patient be emailed when to expect the link, if the policy holds it). See
:mod:`release.embargo`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("release_requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("hold_kind", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("hold_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("hold_checked_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("tell_patient_when", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("release_requests", schema=None) as batch_op:
        batch_op.drop_column("tell_patient_when")
        batch_op.drop_column("hold_checked_at")
        batch_op.drop_column("hold_until")
        batch_op.drop_column("hold_kind")
