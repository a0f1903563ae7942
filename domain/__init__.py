"""The domain: a video's job and its rules, independent of HTTP and of Celery.

The state machine (``jobs``), the models, uploads (form and direct), quotas, storage (S3) and
the queue seam. Errors are plain exceptions (``errors``); the HTTP edge gives them statuses.
"""
