"""HL7 reports: remember the Study Instance UID the message named

Revision ID: 0021
Revises: 0020

- ``reports.message_study_uid``: the Study Instance UID an ``ORU^R01`` carried (OBX
  113014 or ZDS-1), NULL when it carried none (and for every report recorded before this
  revision). A report that arrives before its study waits; the link sweep
  (:meth:`ris.reports.ReportBook.link_waiting`) now also looks at it once a study with
  this UID is here, even when that study has no accession number (before, only a study
  with the report's accession number was looked for, so such a report was never linked
  and was deleted after ``store.unmatched_retention_days``). Indexed for that look-up.
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_study_uid", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_reports_message_study_uid"), ["message_study_uid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reports_message_study_uid"))
        batch_op.drop_column("message_study_uid")
