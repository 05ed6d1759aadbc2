// celeryflow dashboard: the live parts. An element with data-poll="URL" has its
// content replaced by the HTML fragment at URL every data-interval ms while the tab
// is visible. The fragment is rendered and escaped by the server; nothing from it is
// evaluated here. A response with "X-Celeryflow-Final: 1" is the last one.
"use strict";
(function () {
  function poll(el) {
    var url = el.getAttribute("data-poll");
    var every = parseInt(el.getAttribute("data-interval"), 10) || 2000;
    var busy = false;
    var timer = setInterval(function () {
      if (busy || document.visibilityState !== "visible") return;
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (response) {
          if (!response.ok) return null;
          if (response.headers.get("X-Celeryflow-Final") === "1") {
            clearInterval(timer);
            el.removeAttribute("data-poll");
          }
          return response.text();
        })
        .then(function (html) {
          if (html !== null) el.innerHTML = html;
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(poll);
  });
})();
