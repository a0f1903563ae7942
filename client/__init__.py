"""``videoproc``: the command-line client of the API (uploads straight to S3, resumable)."""
