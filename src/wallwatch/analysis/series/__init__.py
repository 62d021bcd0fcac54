"""Stage 3, series: the dense hourly and daily grid per country, network, service and feature.

`build` plans and writes the grid (with `insufficient` hours and folded long
gaps); `queries` holds the SQL it runs over the verdicts.
"""
