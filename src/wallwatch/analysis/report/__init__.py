"""Stage 5, report: an offline HTML page with charts, the event table, a feed and exports.

`charts` builds the Vega-Lite charts (Altair) and renders them to SVG/PNG;
`html` assembles the page from `templates/`; `exports` writes a table as one CSV or
Parquet file (also for `wallwatch export`).
"""
