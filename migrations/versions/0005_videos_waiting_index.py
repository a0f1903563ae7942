"""videos by status and upload time: the queue position counts the waiting videos ahead from the index alone

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('videos') as batch_op:
        # Its leading column serves every lookup by status that the one it replaces served. Built
        # in the migration's transaction (not CONCURRENTLY, which needs none: it would end the
        # advisory lock of migrations/env.py), so writes to videos wait while it builds: seconds
        # for a million rows.
        batch_op.create_index('ix_videos_status_created_at', ['status', 'created_at'], unique=False)
        batch_op.drop_index('ix_videos_status')


def downgrade():
    with op.batch_alter_table('videos') as batch_op:
        batch_op.create_index('ix_videos_status', ['status'], unique=False)
        batch_op.drop_index('ix_videos_status_created_at')
