"""commitment reports: storage commitment reports received on a new association

Revision ID: 0010
Revises: 0009

A peer (Orthanc) answers Courier's N-ACTION with an N-EVENT-REPORT on an association
of its own, to the main SCP, which runs in other processes than the sender: the report
is handed over through ``commitment_reports``. ``dicom_sends.transaction_uid`` names
the N-ACTION that last asked for each instance, so a report that comes in after the
sender stopped waiting still finds its rows.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commitment_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.Integer(), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("peer_host", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("committed", sa.Text(), nullable=False),
        sa.Column("failed", sa.Text(), nullable=False),
        sa.Column("applied_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_commitment_reports_transaction_uid"),
        "commitment_reports",
        ["transaction_uid"],
        unique=False,
    )
    with op.batch_alter_table("dicom_sends") as batch:
        batch.add_column(
            sa.Column("transaction_uid", sa.String(length=64), nullable=False, server_default="")
        )
        batch.create_index(
            op.f("ix_dicom_sends_transaction_uid"), ["transaction_uid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dicom_sends") as batch:
        batch.drop_index(op.f("ix_dicom_sends_transaction_uid"))
        batch.drop_column("transaction_uid")
    op.drop_index(op.f("ix_commitment_reports_transaction_uid"), table_name="commitment_reports")
    op.drop_table("commitment_reports")
