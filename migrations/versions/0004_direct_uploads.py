"""direct uploads (the S3 multipart upload of an ``uploading`` video) and idempotency keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('videos') as batch_op:
        batch_op.add_column(sa.Column('upload_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('s3_upload_id', sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column('part_size', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('upload_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_videos_upload_id', ['upload_id'], unique=True)
    op.create_table(
        'idempotency_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('body', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('user_id', 'key', name='uq_idempotency_keys_user_key'),
    )
    op.create_index('ix_idempotency_keys_created_at', 'idempotency_keys', ['created_at'])


def downgrade():
    op.drop_index('ix_idempotency_keys_created_at', table_name='idempotency_keys')
    op.drop_table('idempotency_keys')
    with op.batch_alter_table('videos') as batch_op:
        batch_op.drop_index('ix_videos_upload_id')
        batch_op.drop_column('upload_expires_at')
        batch_op.drop_column('part_size')
        batch_op.drop_column('s3_upload_id')
        batch_op.drop_column('upload_id')
