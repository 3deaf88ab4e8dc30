"""report instances: remember the unreadable ones

Revision ID: 0020
Revises: 0019

- ``instances.report_unreadable_at``: when the report sweep (:mod:`ris.dicom`) last
  failed to read the header of this SR or PDF instance (NULL: never failed, or read
  since). The sweep looks for new report instances without these, so however many
  unreadable ones pile up, new ones are always reached; it tries each one again a day
  later. The instance itself is untouched (still listed, still withheld from
  recipients as an unrecorded report instance).
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_unreadable_at", sa.DateTime(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_instances_report_unreadable_at"), ["report_unreadable_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_report_unreadable_at"))
        batch_op.drop_column("report_unreadable_at")
