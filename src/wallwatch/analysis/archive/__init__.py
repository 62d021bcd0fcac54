"""OONI's public archive: its S3 bucket layout (`bucket.py`) and a resumable fetch of it (`sync.py`).

`wallwatch sync` lists and downloads; `wallwatch ingest s3://...` reads objects straight from the
bucket (ingest/pipeline.py uses `bucket.py` for that). Neither imports the other's engine: the CLI
joins them (`sync --ingest`).
"""
