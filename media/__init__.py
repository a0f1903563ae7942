"""Pure FFmpeg: probe parsing, validation, command building and a runner with progress.

Nothing here knows about S3, the database, Flask or Celery; both the web side
(upload validation) and the worker (processing) build on it.
"""
