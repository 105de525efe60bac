#include "server/assets.hpp"

namespace flowreg::detail::assets {

// clang-format off
const char* const kCss = R"CSS(
:root { --fg: #1d2433; --muted: #5b6478; --bg: #ffffff; --panel: #f5f7fb; --line: #d9dfea;
        --accent: #2f5da8; --ok: #1d7a3a; --bad: #b3261e; --warn: #8a5a00; --run: #2f5da8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { background: #1d2433; color: #fff; padding: .5rem 1rem; display: flex; flex-wrap: wrap;
         align-items: center; gap: .25rem 1rem; }
header .brand { font-weight: 700; margin-right: .5rem; }
header nav a { color: #dfe6f5; text-decoration: none; padding: .35rem .5rem; border-radius: 4px;
               display: inline-block; }
header nav a[aria-current="page"], header nav a:hover { background: #34405a; color: #fff; }
header .live { margin-left: auto; font-size: .85rem; color: #aab4c8; }
header .live.on::before { content: "\25CF "; color: #58c27d; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.4rem; margin: .5rem 0 1rem; word-break: break-word; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
a { color: var(--accent); }
a:focus-visible, button:focus-visible, input:focus-visible, select:focus-visible {
  outline: 3px solid #f0b429; outline-offset: 2px; }
.table-wrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: var(--panel); font-weight: 600; font-size: .85rem; color: var(--muted); }
tr:last-child td { border-bottom: none; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
                   font-size: .85rem; }
pre { background: var(--panel); padding: .6rem; border-radius: 6px; overflow-x: auto;
      white-space: pre-wrap; word-break: break-word; max-height: 24rem; }
.status { display: inline-block; padding: .05rem .5rem; border-radius: 999px; font-size: .8rem;
          font-weight: 600; border: 1px solid currentColor; }
.s-completed, .s-loaded, .s-running { color: var(--ok); }
.s-failed, .s-rejected, .s-quarantined, .s-stale { color: var(--bad); }
.s-cancelled, .s-waiting, .s-stuck, .s-replacing, .s-stopped { color: var(--warn); }
.s-started, .s-created, .s-scheduled { color: var(--run); }
.s-skipped { color: var(--muted); }
ul.plain { list-style: none; padding: 0; margin: 0; }
.muted { color: var(--muted); }
.error { color: var(--bad); white-space: pre-wrap; word-break: break-word; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1rem;
         align-items: start; }
ul.compact { list-style: none; padding: 0; margin: 0; }
ul.compact li { padding: .2rem 0; display: flex; gap: .6rem; align-items: center; }
td.error { min-width: 12rem; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: .8rem; background: #fff; }
.card h2 { margin-top: 0; }
.dag { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
.dag-wrap { overflow-x: auto; background: var(--panel); border-radius: 6px; padding: .5rem; }
ul.legend { list-style: none; display: flex; flex-wrap: wrap; gap: .4rem 1rem; padding: 0;
            margin: .25rem 0 1rem; font-size: .85rem; }
ul.legend .swatch { display: inline-block; min-width: 1.4rem; text-align: center;
                    border: 1.5px solid; border-radius: 4px; color: #1f2937; }
.pager a { margin-right: .5rem; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: 1rem; }
label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); gap: .2rem; }
input, select, button { font: inherit; padding: .35rem .5rem; border: 1px solid var(--line);
                        border-radius: 4px; background: #fff; }
button { background: var(--accent); color: #fff; border-color: var(--accent); cursor: pointer; }
button.secondary { background: #fff; color: var(--accent); }
.timeline { position: relative; height: 1rem; background: var(--panel); border-radius: 3px;
            min-width: 8rem; }
.timeline span { position: absolute; top: 0; bottom: 0; background: var(--accent);
                 border-radius: 3px; min-width: 2px; }
.timeline span.s-failed { background: var(--bad); }
.timeline span.s-completed { background: var(--ok); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0 0 1rem; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; word-break: break-word; }
.actions { display: flex; gap: .5rem; margin: .5rem 0 1rem; }
form.start-run { display: flex; flex-direction: column; gap: .5rem; max-width: 48rem; }
form.start-run textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
                          font-size: .85rem; width: 100%; padding: .5rem; border: 1px solid
                          var(--line); border-radius: 4px; resize: vertical; }
.start-row { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; }
.start-row label { flex: 1 1 14rem; }
button:disabled { opacity: .5; cursor: not-allowed; }
.problem { border: 1px solid var(--bad); border-radius: 6px; padding: .4rem .8rem; }
.problem p, .problem ul { margin: .2rem 0; }
.retry { font-size: .8rem; color: var(--warn); margin-top: .2rem; }
.send-signal { margin-top: .3rem; display: grid; gap: .2rem; max-width: 28rem; }
.send-signal textarea { font-family: var(--mono, monospace); font-size: .8rem; }
.send-signal button { justify-self: start; }
form.inline { display: inline; margin: 0; }
td.row-actions form { display: block; margin: 0 0 .3rem; }
td.row-actions button { white-space: nowrap; }
code.cron { white-space: nowrap; }
.s-paused, .s-due { color: var(--warn); }
.s-scheduled { color: var(--run); }
.s-error { color: var(--bad); }
.notice { background: #fff7e0; border: 1px solid #f0d58a; padding: .5rem .8rem; border-radius: 6px; }
@media (max-width: 640px) {
  main { padding: .6rem; }
  th.wide, td.wide { display: none; }
  dl.meta { grid-template-columns: 1fr; }
}
)CSS";

const char* const kJs = R"JS(
(function () {
  'use strict';
  var body = document.body;
  var watchRun = body.getAttribute('data-watch-run') || '';
  var live = document.getElementById('live');
  var lastId = '';

  function authHeaders() {
    var t = sessionStorage.getItem('flowreg_token');
    return t ? { 'Authorization': 'Bearer ' + t } : {};
  }
  function each(selector, fn) {
    Array.prototype.forEach.call(document.querySelectorAll(selector), fn);
  }
  function attr(value) { return '"' + String(value).replace(/["\\]/g, '\\$&') + '"'; }
  function setStatus(el, status) {
    if (el.textContent === status) return;
    el.textContent = status;
    el.className = 'status s-' + status;
    el.setAttribute('data-live', 'updated');
  }
  // Runs started since the page loaded, announced on the newest page of /runs.
  var newRuns = document.getElementById('new-runs'), seen = {};
  function announce(d) {
    if (!newRuns || d.status !== 'started' || seen[d.id]) return;
    if (document.querySelector('[data-run-status=' + attr(d.id) + ']')) return;
    var flow = newRuns.getAttribute('data-new-runs-flow');
    if (flow && d.flow !== flow) return;
    seen[d.id] = true;
    var n = Object.keys(seen).length;
    document.getElementById('new-runs-count').textContent =
      n + (n === 1 ? ' new run' : ' new runs') + ' since this page loaded';
    newRuns.hidden = false;
  }
  var showNew = document.getElementById('new-runs-show');
  if (showNew) showNew.addEventListener('click', function (e) {
    e.preventDefault();
    location.reload();
  });
  function onRun(d) {
    announce(d);
    each('[data-run-status=' + attr(d.id) + ']', function (el) { setStatus(el, d.status); });
    if (d.finished_at) each('[data-run-finished=' + attr(d.id) + ']', function (el) {
      el.textContent = d.finished_at;
    });
    if (watchRun === d.id && d.status !== 'started') {
      var n = document.getElementById('run-ended');
      if (n) n.hidden = false;
    }
  }
  function onStep(d) {
    if (watchRun !== d.run) return;
    each('[data-step-status=' + attr(d.step) + ']', function (el) { setStatus(el, d.status); });
    each('[data-step-attempts=' + attr(d.step) + ']', function (el) {
      if (el.textContent !== String(d.attempts)) {
        each('[data-step-retry=' + attr(d.step) + ']', function (r) { r.hidden = true; });
      }
      el.textContent = String(d.attempts);
    });
  }
  function handle(block) {
    var type = 'message', data = '';
    block.split('\n').forEach(function (line) {
      if (line.indexOf('event: ') === 0) type = line.slice(7);
      else if (line.indexOf('data: ') === 0) data += line.slice(6);
      else if (line.indexOf('id: ') === 0) lastId = line.slice(4);
    });
    if (!data) return;
    var d;
    try { d = JSON.parse(data); } catch (e) { return; }
    if (type === 'run') onRun(d);
    else if (type === 'step') onStep(d);
    else if (type === 'reset') location.reload();  // changes were missed: render them anew
  }
  function showLive(text, on) {
    if (!live) return;
    live.textContent = text;
    live.className = on ? 'live on' : 'live';
  }
  // The stream ends with the page: a page kept for the back button must not hold one of the few
  // connections a browser opens to a server (6 in Chromium), which the next page needs. Shown
  // again from that cache, it follows the changes again.
  var stream = null;
  window.addEventListener('pagehide', function () { if (stream) stream.abort(); });
  window.addEventListener('pageshow', function (e) { if (e.persisted && live) connect(); });
  function connect() {
    var headers = authHeaders();
    if (lastId) headers['Last-Event-ID'] = lastId;
    var url = '/api/v1/events' + (watchRun ? '?run=' + encodeURIComponent(watchRun) : '');
    var mine = stream = window.AbortController ? new AbortController() : null;
    fetch(url, { headers: headers, cache: 'no-store',
                 signal: mine ? mine.signal : undefined }).then(function (r) {
      if (r.status === 401) { showLive('live: needs the token', false); askToken(); return; }
      if (!r.ok || !r.body) throw new Error('HTTP ' + r.status);
      showLive('live', true);
      var reader = r.body.getReader(), decoder = new TextDecoder(), buffer = '';
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) throw new Error('stream ended');
          buffer += decoder.decode(chunk.value, { stream: true });
          var i;
          while ((i = buffer.indexOf('\n\n')) >= 0) {
            handle(buffer.slice(0, i));
            buffer = buffer.slice(i + 2);
          }
          return pump();
        });
      }
      return pump();
    }).catch(function () {
      if (mine && mine.signal.aborted) return;  // the page was left
      showLive('live: reconnecting', false);
      setTimeout(connect, 2000);
    });
  }
  function askToken() {
    var form = document.getElementById('token-form');
    if (form) form.hidden = false;
  }
  var tokenForm = document.getElementById('token-form');
  if (tokenForm) tokenForm.addEventListener('submit', function (e) {
    e.preventDefault();
    var v = document.getElementById('token-input').value;
    if (v) sessionStorage.setItem('flowreg_token', v);
    location.reload();
  });
  // "5 min ago": kept current (the server wrote it when it made the page).
  function agoText(seconds) {
    return seconds < 60 ? seconds + ' s ago' : seconds < 3600 ? Math.floor(seconds / 60) + ' min ago'
         : seconds < 86400 ? Math.floor(seconds / 3600) + ' h ago'
         : Math.floor(seconds / 86400) + ' d ago';
  }
  setInterval(function () {
    each('time[data-ago]', function (t) {
      var at = Date.parse(t.getAttribute('datetime'));
      if (!isNaN(at)) t.textContent = agoText(Math.max(0, Math.floor((Date.now() - at) / 1000)));
    });
  }, 15000);
  // A form that asks first (a schedule's Delete).
  each('form[data-confirm]', function (f) {
    f.addEventListener('submit', function (e) {
      if (!window.confirm(f.getAttribute('data-confirm'))) e.preventDefault();
    });
  });
  each('button[data-action]', function (b) {
    b.addEventListener('click', function () {
      fetch(b.getAttribute('data-action'), { method: 'POST', headers: authHeaders(),
                                             referrerPolicy: 'same-origin' })
        .then(function (r) {
          return r.json().then(function (j) {
            if (r.ok && j.id && j.id !== watchRun) location.href = '/runs/' + encodeURIComponent(j.id);
            else if (r.ok) location.reload();
            else {
              if (r.status === 401) askToken();
              var m = document.getElementById('action-error');
              if (m) { m.textContent = j.detail || j.title; m.hidden = false; }
            }
          });
        });
    });
  });
  // A waiting step's signal form (the run page): posts its data; the page reloads when it was
  // taken, else shows the problem's detail.
  each('form[data-signal-url]', function (f) {
    f.addEventListener('submit', function (e) {
      e.preventDefault();
      var headers = authHeaders();
      headers['Content-Type'] = 'application/json';
      var box = f.querySelector('[data-signal-problem]');
      box.hidden = true;
      fetch(f.getAttribute('data-signal-url'), {
        method: 'POST', headers: headers, credentials: 'same-origin',
        referrerPolicy: 'same-origin', body: f.querySelector('textarea').value
      }).then(function (r) {
        return r.text().then(function (text) {
          var j = null;
          try { j = JSON.parse(text); } catch (err) { j = null; }
          if (r.ok) { location.reload(); return; }
          if (r.status === 401) askToken();
          box.textContent = (j && (j.detail || j.title)) || ('HTTP ' + r.status);
          box.hidden = false;
        });
      }).catch(function (err) {
        box.textContent = 'The request failed: ' + err;
        box.hidden = false;
      });
    });
  });
  // The workers page: heartbeat ages, statuses and slots read again every 5 s (the age counts up
  // between reads).
  var workersTable = document.getElementById('workers');
  if (workersTable) {
    var readAt = Date.now();
    var tick = function () {
      each('[data-heartbeat-age]', function (el) {
        var ms = Number(el.getAttribute('data-heartbeat-age')) + (Date.now() - readAt);
        el.textContent = (ms / 1000).toFixed(1) + ' s';
      });
    };
    var reread = function () {
      fetch('/api/v1/workers', { headers: authHeaders(), cache: 'no-store' }).then(function (r) {
        return r.ok ? r.json() : null;
      }).then(function (list) {
        if (!list) return;
        readAt = Date.now();
        list.forEach(function (w) {
          each('tr[data-worker]', function (row) {
            if (row.getAttribute('data-worker') !== w.id) return;
            var age = row.querySelector('[data-heartbeat-age]');
            if (age) age.setAttribute('data-heartbeat-age', String(w.last_heartbeat_ms_ago));
            var slots = row.querySelector('[data-worker-slots]');
            if (slots) slots.textContent = w.held + ' / ' + w.concurrency;
            var hp = row.querySelector('[data-handler-processes]'), p = w.handler_processes;
            if (hp) {
              hp.textContent = !p ? 'none (threads)' : p.alive + ' alive (' + p.busy +
                ' busy); ' + p.started + ' started, ' + p.crashed + ' crashed, ' +
                p.timed_out + ' timed out, ' + p.killed_by_limit + ' killed by a limit, ' +
                p.broken + ' broken';
            }
            var badge = row.querySelector('[data-worker-status] .status');
            if (badge) { badge.textContent = w.status; badge.className = 'status s-' + w.status; }
          });
        });
        tick();
      }).catch(function () {});
    };
    setInterval(tick, 1000);
    setInterval(reread, 5000);
  }
  // The flow page's form: starts a run with fetch(), then opens it; a refusal (400, 422, ...)
  // shows the problem's detail and each of its errors as text.
  var startForm = document.getElementById('start-run');
  if (startForm) {
    var startButton = document.getElementById('start-button');
    var problemBox = document.getElementById('start-problem');
    each('[data-needs-script]', function (el) { el.hidden = true; });
    startButton.disabled = false;
    var showProblem = function (detail, errors) {
      document.getElementById('start-detail').textContent = detail;
      var list = document.getElementById('start-errors');
      while (list.firstChild) list.removeChild(list.firstChild);
      (errors || []).forEach(function (e) {
        var li = document.createElement('li');
        li.textContent = String(e);
        list.appendChild(li);
      });
      problemBox.hidden = false;
    };
    startForm.addEventListener('submit', function (e) {
      e.preventDefault();
      var headers = authHeaders();
      headers['Content-Type'] = 'application/json';
      var key = document.getElementById('start-key').value.trim();
      if (key) headers['Idempotency-Key'] = key;
      // A delayed start: ?delay=DURATION (the server checks it).
      var delay = document.getElementById('start-delay').value.trim();
      var url = startForm.getAttribute('data-start-url');
      // The run's own priority: ?priority=N (the server checks it).
      var priority = document.getElementById('start-priority').value.trim();
      var params = [];
      if (delay) params.push('delay=' + encodeURIComponent(delay));
      if (priority) params.push('priority=' + encodeURIComponent(priority));
      if (params.length) url += '?' + params.join('&');
      startButton.disabled = true;
      problemBox.hidden = true;
      fetch(url, {
        method: 'POST', headers: headers, credentials: 'same-origin',
        // A POST's Origin is checked: 'same-origin' (the server's policy too) lets it carry the
        // page's, where no-referrer would make it 'null', refused as cross-site.
        referrerPolicy: 'same-origin',
        body: document.getElementById('start-input').value
      }).then(function (r) {
        return r.text().then(function (text) {
          var j = null;
          try { j = JSON.parse(text); } catch (err) { j = null; }
          if (r.status === 201 && j && j.id) {
            location.href = '/runs/' + encodeURIComponent(j.id);
            return;
          }
          if (r.status === 401) askToken();
          startButton.disabled = false;
          if (j && typeof j === 'object')
            showProblem(String(j.detail || j.title || ('HTTP ' + r.status)),
                        Array.isArray(j.errors) ? j.errors : []);
          else showProblem('HTTP ' + r.status, []);
        });
      }).catch(function (err) {
        startButton.disabled = false;
        showProblem('The request failed: ' + err, []);
      });
    });
  }
  if (live) connect();
})();
)JS";
// clang-format on

}  // namespace flowreg::detail::assets
