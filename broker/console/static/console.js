// The console's only script of its own: no inline scripts anywhere (the CSP forbids them).
// Charts are declared by the server as <canvas data-chart="{Chart.js config as JSON}">, each
// with a table of the same figures beside it; uploads show their progress in the <progress>
// inside the form that sends them (HTMX's xhr:progress events).
(function () {
  "use strict";

  function drawCharts(root) {
    if (typeof Chart === "undefined") { return; }
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.dataset.drawn) { return; }
      canvas.dataset.drawn = "1";
      var config = JSON.parse(canvas.dataset.chart);
      config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
      new Chart(canvas.getContext("2d"), config);
    });
  }

  function onProgress(event) {
    var form = event.target.closest ? event.target.closest("form") : null;
    var bar = form ? form.querySelector("progress") : null;
    var detail = event.detail || {};
    if (bar && detail.lengthComputable) {
      bar.max = detail.total;
      bar.value = detail.loaded;
      bar.textContent = Math.round(100 * detail.loaded / detail.total) + "%";
    }
  }

  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSettle", function (event) { drawCharts(event.target); });
  document.addEventListener("htmx:xhr:progress", onProgress);
  // A confirmation asked by a button's data-confirm (revoking a contract, say).
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var message = (button && button.dataset.confirm) || event.target.dataset.confirm;
    if (message && !window.confirm(message)) { event.preventDefault(); }
  }, true);

  // --- Forms that answer with their refusal (provider uploads, ...) ------------------------
  // A refused form answers 409, 413 or 422 with an HTML fragment saying why (problems per
  // column, fields named); HTMX leaves error responses unswapped, so such a fragment is
  // shown in the form's target instead. Other errors (and non-HTML bodies) stay errors.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    var type = xhr.getResponseHeader("Content-Type") || "";
    if ([409, 413, 422].indexOf(xhr.status) >= 0 && type.indexOf("text/html") === 0) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
}());
