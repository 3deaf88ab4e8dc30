"""pixels: declared pixel sizes and bounded rendering (issue 14.2)

Revision ID: 0012
Revises: 0011

Each instance records the pixel size its header declares (``instances.declared_pixels``:
Rows x Columns x NumberOfFrames x SamplesPerPixel), checked against ``scp.max_pixels`` at
ingest. Instances received before this revision keep NULL (unknown): previews read the
header again before decoding anyway.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("declared_pixels", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("declared_pixels")
