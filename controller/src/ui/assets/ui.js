// Refreshes the live part of an Outpost page: fetches the page's fragment every few seconds (while the tab is
// visible) and swaps it in when it changed, keeping the focus and the scroll of log boxes. No other behaviour.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var updated = document.getElementById("updated");
  if (!live || !live.dataset.refresh) return;
  var url = live.dataset.refresh;
  var every = Math.max(500, parseInt(live.dataset.every || "2000", 10));
  var last = live.innerHTML;
  function stamp(text) { if (updated) updated.textContent = text; }
  function tick() {
    if (document.hidden) return;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login"); return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        if (html === null) return;
        if (html !== last) {
          var active = document.activeElement && document.activeElement.name;
          var logs = Array.prototype.map.call(live.querySelectorAll("pre.log"), function (p) {
            return p.scrollTop + p.clientHeight >= p.scrollHeight - 4;
          });
          live.innerHTML = html;
          last = html;
          Array.prototype.forEach.call(live.querySelectorAll("pre.log"), function (p, i) {
            if (logs[i] !== false) p.scrollTop = p.scrollHeight;
          });
          if (active) { var again = live.querySelector("[name='" + active + "']"); if (again) again.focus(); }
        }
        stamp("Updated " + new Date().toLocaleTimeString());
      })
      .catch(function (e) { stamp("Update failed (" + e.message + "); retrying"); });
  }
  setInterval(tick, every);
})();
