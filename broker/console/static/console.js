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

  // --- Focus and rows (the department's query builder; generic) ---------------------------
  // After a swap, focus moves to the first [data-focus] the new content holds (a new row's
  // first control, the results heading), once. A button[data-remove="selector"] removes its
  // closest such ancestor and moves focus to data-focus-after. A response the server marks
  // X-Console-Fragment is swapped in even with an error status (a refusal shown in place).
  function focusNew(root) {
    var target = root && root.querySelector ? root.querySelector("[data-focus]") : null;
    if (root && root.matches && root.matches("[data-focus]")) { target = root; }
    if (target) {
      (root.querySelectorAll ? root.querySelectorAll("[data-focus]") : []).forEach(function (el) {
        el.removeAttribute("data-focus");
      });
      target.removeAttribute("data-focus");
      target.focus();
    }
  }
  document.addEventListener("htmx:afterSettle", function (event) { focusNew(event.detail.elt || event.target); });
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr && xhr.status >= 400 && xhr.getResponseHeader("X-Console-Fragment") === "1") {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-remove]") : null;
    if (!button) { return; }
    var row = button.closest(button.dataset.remove);
    var next = button.dataset.focusAfter ? document.querySelector(button.dataset.focusAfter) : null;
    if (row) { row.remove(); }
    if (next) { next.focus(); }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var now = document.querySelector("[data-focus-now]");
    document.querySelectorAll("[data-focus]").forEach(function (el) { el.removeAttribute("data-focus"); });
    if (now) { now.focus(); }
  });

  // --- Errors no page fragment explains -------------------------------------------------------
  // A partial request refused before any console route saw it (a file over the size limit, the
  // rate limit, a malformed request): the translated sentence the base page carries for its
  // status is shown in the alert above the content, and focused, so no failure passes unseen.
  function showError(key) {
    var box = document.getElementById("console-error");
    if (!box) { return; }
    box.textContent = box.dataset[key] || box.dataset["default"];
    box.hidden = false;
    box.focus();
  }
  // HTML error answers (the console's error pages and refusal fragments) are swapped in (the
  // htmx-config of base.html); anything else (the API's JSON problems, which the middleware
  // answers before any console route runs) is never put into the page, only announced.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    var type = xhr ? (xhr.getResponseHeader("Content-Type") || "") : "";
    if (xhr && xhr.status >= 400 && type.indexOf("text/html") !== 0) {
      event.detail.shouldSwap = false;
      showError(String(xhr.status));
    }
  });
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    showError(xhr ? String(xhr.status) : "default");
  });
  document.addEventListener("htmx:sendError", function () { showError("offline"); });
  document.addEventListener("htmx:beforeRequest", function () {
    var box = document.getElementById("console-error");
    if (box) { box.hidden = true; }
  });
}());
