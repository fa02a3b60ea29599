// Live updates of the approvals page: on each change bridled reports, the
// requests part of the page is fetched again, rendered by bridled. An
// answer being typed is not swept away: the swap waits until the field
// loses focus.
// Addresses are relative: the page lives below its session's own path.
(function () {
  "use strict";
  var main = document.getElementById("requests");
  var live = document.getElementById("live");
  var stale = false;

  function typing() {
    var a = document.activeElement;
    return a && main.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT");
  }

  function refresh() {
    if (typing()) { stale = true; return; }
    stale = false;
    fetch("requests", { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (r.status === 401) { window.location.reload(); return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined) { main.innerHTML = html; }
    });
  }

  main.addEventListener("focusout", function () {
    setTimeout(function () { if (stale) { refresh(); } }, 0);
  });

  var es = new EventSource("events");
  es.addEventListener("open", function () { live.textContent = "live"; live.className = "live on"; refresh(); });
  es.addEventListener("error", function () {
    live.textContent = "reconnecting…";
    live.className = "live off";
    // A stream refused for good (the session ended): the page says why.
    if (es.readyState === EventSource.CLOSED) { refresh(); }
  });
  es.addEventListener("change", refresh);
  // Ages on the page move on even when nothing changes.
  setInterval(refresh, 30000);
})();
