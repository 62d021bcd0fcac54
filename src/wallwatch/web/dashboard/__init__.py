"""The dashboard: server-rendered pages over a data folder, charts drawn by vendored Vega-Lite.

`router` (a FastAPI `APIRouter`) is what an app includes; the app sets
`app.state.store` (an `analysis.store.Store` over the data folder the batch
commands and the live pipeline write) and, optionally, `app.state.calendar`
(dated annotations: `Annotation`, or dicts with `date`, `title`, `url`).

Pages: what is blocked now (`/`), a country (`/country/CN`), a network
(`/network/CN/4134`), a timeline per service and feature (`/timeline?cc=&service=&feature=`),
the network x day heatmap (`/heatmap?...`), an event with its evidence
(`/event/ID`) and a measurement with its verdicts and raw JSON
(`/measurement/UID`). Filters live in the URL; every table and chart shown
can be downloaded (`.../data.csv`, `.../data.parquet`, `.../chart.png`).
The charts are the report's (`analysis/report/charts.py`): one definition of each.
"""

from wallwatch.analysis.report.charts import Annotation
from wallwatch.web.dashboard.routes import router, vendor_missing

__all__ = ["Annotation", "router", "vendor_missing"]
