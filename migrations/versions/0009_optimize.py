"""optimize: the optimize stage's state on the video's row, its AV1 rendition and what each rendition was made with

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('videos') as batch_op:
        batch_op.add_column(sa.Column('optimize_status', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('optimize_claimed_by', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('optimize_heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('optimize_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('optimize_progress', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('optimize_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('optimized_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('av1_key', sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column('renditions', sa.Text(), nullable=True))
        batch_op.create_index('ix_videos_optimize_status', ['optimize_status'], unique=False)


def downgrade():
    with op.batch_alter_table('videos') as batch_op:
        batch_op.drop_index('ix_videos_optimize_status')
        for column in ('renditions', 'av1_key', 'optimized_at', 'optimize_error', 'optimize_progress',
                       'optimize_attempts', 'optimize_heartbeat_at', 'optimize_claimed_by', 'optimize_status'):
            batch_op.drop_column(column)
