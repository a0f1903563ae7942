"""The worker side: queue → S3 → FFmpeg → S3 → database.

``celery -A tasks worker`` finds the Celery app in ``tasks.celery``, which builds the
Flask app; importing ``tasks.process`` or ``tasks.errors`` alone builds nothing.
"""
