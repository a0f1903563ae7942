"""idempotency keys: the video their request created, committed with it, so a replay never makes a second

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('idempotency_keys') as batch_op:
        batch_op.add_column(sa.Column('video_id', sa.String(length=36), nullable=True))


def downgrade():
    with op.batch_alter_table('idempotency_keys') as batch_op:
        batch_op.drop_column('video_id')
