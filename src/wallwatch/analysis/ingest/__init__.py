"""Stage 1, ingest: measurement files in, rows of the three base datasets out.

`pipeline` finds files, hands them to worker processes and writes what they
return through the store, deduplicated and resumable; `worker` reads one file
(JSON, JSONL, gzip) and turns each record into measurement, observation and
verdict rows; `header` validates the envelope fields every record must have;
`decode` reads only the test-key fields the observations need.
"""
