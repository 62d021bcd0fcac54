// Draws each page's charts from the Vega-Lite specs embedded in it, with the vendored
// vega-embed (static/vendor/, installed by scripts/install.sh): nothing is fetched from
// elsewhere. A chart that fails says so in place of the chart.
(function () {
  if (typeof vegaEmbed === "undefined") { return; }
  document.querySelectorAll("script.chart-spec").forEach(function (element) {
    var target = document.getElementById(element.dataset.target);
    var spec = JSON.parse(element.textContent);
    // Timelines are 760 px wide in the report; on a wider page they take the room there is
    // (less the axis and its labels). Heatmaps keep their cell size.
    if (typeof spec.width === "number" && target.clientWidth > spec.width + 120) {
      spec.width = target.clientWidth - 120;
    }
    vegaEmbed(target, spec, {actions: false, renderer: "svg"})
      .then(function () { target.dataset.rendered = "true"; })
      .catch(function (error) {
        target.dataset.rendered = "failed";
        target.textContent = "This chart could not be drawn: " + error;
      });
  });
})();
