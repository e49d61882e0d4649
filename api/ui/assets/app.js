// pyrunner's dashboard: a small single-page app on pyrunner's own HTTP API.
// No framework and no outside assets; every URL is relative to the API root
// (window.PYRUNNER.root), so it works behind a path prefix.
(function () {
  'use strict';
  var ROOT = window.PYRUNNER.root, SP = ROOT + window.PYRUNNER.scriptPrefix;
  var main = document.getElementById('main');
  var timers = [];
  var aborts = [];

  // ------------------------------------------------------------ helpers
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') e.textContent = attrs[k];
      else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }
  function token() { return sessionStorage.getItem('pyrunner-token') || ''; }
  function headers(json) {
    var h = {};
    if (json) h['Content-Type'] = 'application/json';
    if (token()) h['Authorization'] = 'Bearer ' + token();
    return h;
  }
  function flash(msg) {
    var f = document.getElementById('flash');
    f.textContent = msg || '';
    f.hidden = !msg;
  }
  // api calls the API; 401 and 403 are explained, and a 401 asks for a token.
  function api(method, path, body) {
    return fetch(path, { method: method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body) })
      .then(function (r) {
        return r.text().then(function (t) {
          var data = null;
          try { data = t ? JSON.parse(t) : null; } catch (e) { data = { detail: t }; }
          if (r.status === 401) { askToken('Not signed in: ' + (data && data.detail || 'a token is needed')); throw new Error('401'); }
          if (r.status === 403) { flash('Not allowed: ' + (data && data.detail || 'insufficient scopes') + ' (your token lacks the scope this needs)'); throw new Error('403'); }
          if (r.status >= 400) { var err = new Error((data && data.detail) || ('HTTP ' + r.status)); err.status = r.status; throw err; }
          return data;
        });
      });
  }
  function askToken(msg) {
    document.getElementById('auth-msg').textContent = msg;
    document.getElementById('auth').hidden = false;
    main.hidden = true;
  }
  document.getElementById('auth-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    sessionStorage.setItem('pyrunner-token', document.getElementById('auth-token').value.trim());
    document.getElementById('auth').hidden = true;
    main.hidden = false;
    route();
  });
  function badge(s) { return el('span', { 'class': 'status ' + s, 'data-status': s, text: s }); }
  function fmtTime(t) { return t ? t.replace('T', ' ').replace(/\.\d+/, '').replace('+00:00', ' UTC') : '–'; }
  function every(ms, f) { f(); timers.push(setInterval(f, ms)); }
  function go(path) { history.pushState(null, '', path); route(); }
  function link(href, text) {
    return el('a', { href: href, 'data-nav': '', text: text });
  }
  document.addEventListener('click', function (ev) {
    var a = ev.target.closest && ev.target.closest('a[data-nav]');
    if (a && !ev.ctrlKey && !ev.metaKey) { ev.preventDefault(); go(a.getAttribute('href')); }
  });
  window.addEventListener('popstate', route);

  // ------------------------------------------------------------ pages
  function route() {
    timers.forEach(clearInterval); timers = [];
    aborts.forEach(function (a) { a.abort(); }); aborts = [];
    flash('');
    main.innerHTML = '';
    var rel = location.pathname.slice((ROOT + '/ui/').length);
    document.querySelectorAll('header nav a').forEach(function (a) {
      a.classList.toggle('active', a.getAttribute('href') === (rel.split('/')[0] || './'));
    });
    var m = rel.match(/^runs\/([^/]+)$/);
    if (m) return runPage(decodeURIComponent(m[1]));
    if (rel === 'research') return researchPage();
    if (rel === 'scripts') return scriptsPage();
    if (rel === 'system') return systemPage();
    if (rel === 'schedules') return schedulesPage();
    return runsPage();
  }

  function runsPage() {
    var f = { kind: el('select', { id: 'f-kind' }, ['', 'research', 'script'].map(function (k) { return el('option', { value: k, text: k || 'any kind' }); })),
      status: el('select', { id: 'f-status' }, [''].concat(window.PYRUNNER.statuses).map(function (k) { return el('option', { value: k, text: k || 'any status' }); })),
      script: el('input', { id: 'f-script', placeholder: 'script' }) };
    var body = el('tbody', { id: 'runs' });
    main.appendChild(el('h1', { text: 'Runs' }));
    main.appendChild(el('div', { 'class': 'filters' }, [el('label', {}, ['Kind', f.kind]), el('label', {}, ['Status', f.status]), el('label', {}, ['Script', f.script])]));
    main.appendChild(el('table', {}, [el('thead', {}, [el('tr', {}, ['Run', 'Kind', 'Script / market', 'Status', 'Created', 'Worker'].map(function (h) { return el('th', { text: h }); }))]), body]));
    function load() {
      var q = new URLSearchParams({ limit: '100' });
      ['kind', 'status'].forEach(function (k) { if (f[k].value) q.set(k, f[k].value); });
      if (f.script.value) q.set('script', f.script.value);
      api('GET', SP + '/runs?' + q).then(function (d) {
        body.innerHTML = '';
        d.runs.forEach(function (r) {
          body.appendChild(el('tr', { 'data-run': r.run_id }, [el('td', {}, [link('runs/' + r.run_id, r.run_id.slice(0, 8))]), el('td', { text: r.kind }),
            el('td', { text: r.script || r.market || '' }), el('td', {}, [badge(r.status)]), el('td', { text: fmtTime(r.created_at) }), el('td', { 'class': 'muted', text: r.worker || '' })]));
        });
        if (!d.runs.length) body.appendChild(el('tr', {}, [el('td', { colspan: '6', 'class': 'muted', text: 'No runs yet.' })]));
      }).catch(function () {});
    }
    [f.kind, f.status].forEach(function (s) { s.addEventListener('change', load); });
    f.script.addEventListener('input', load);
    every(2000, load);
  }

  function kv(pairs) {
    var g = el('div', { 'class': 'grid' });
    pairs.forEach(function (p) { g.appendChild(el('div', { 'class': 'muted', text: p[0] })); g.appendChild(typeof p[1] === 'object' && p[1] ? p[1] : el('div', { text: p[1] == null ? '–' : String(p[1]) })); });
    return g;
  }

  // renderResearch shows a research answer: error, result, charts, output, timings.
  function renderResearch(box, r) {
    box.innerHTML = '';
    if (r.ok === false) box.appendChild(el('p', { 'class': 'error', id: 'run-error', text: r.error || 'failed' }));
    if (r.ok === true) {
      box.appendChild(el('h2', { text: 'Result' }));
      box.appendChild(el('pre', { 'class': 'light', id: 'run-result', text: JSON.stringify(r.result, null, 2) }));
    }
    if (r.images && r.images.length) {
      box.appendChild(el('h2', { text: 'Charts' }));
      var imgs = el('div', { 'class': 'images' });
      r.images.forEach(function (im) { imgs.appendChild(el('img', { alt: im.name, title: im.name, src: 'data:' + im.mimeType + ';base64,' + im.data })); });
      box.appendChild(imgs);
    }
    if (r.stdout) { box.appendChild(el('h2', { text: 'stdout' + (r.stdoutTruncated ? ' (truncated)' : '') })); box.appendChild(el('pre', { id: 'run-stdout', text: r.stdout })); }
    if (r.stderr) { box.appendChild(el('h2', { text: 'stderr' + (r.stderrTruncated ? ' (truncated)' : '') })); box.appendChild(el('pre', { id: 'run-stderr', text: r.stderr })); }
    var m = r.meta;
    if (m) {
      box.appendChild(el('h2', { text: 'Data and timings' }));
      box.appendChild(kv([['market', m.exchange + ' ' + m.symbol + ' ' + m.binSize], ['rows', m.rows], ['source', m.source], ['queue / load / exec / total', m.queueMs + ' / ' + m.loadMs + ' / ' + m.execMs + ' / ' + m.totalMs + ' ms'],
        ['worker', m.worker], ['warnings', (m.warnings || []).join('; ') || '–']]));
    }
  }

  function runPage(id) {
    main.appendChild(el('h1', { text: 'Run ' + id }));
    var head = el('div', { 'class': 'card', id: 'run-head' });
    var box = el('div', { 'class': 'card', id: 'run-body' });
    main.appendChild(head); main.appendChild(box);
    api('GET', SP + '/runs/' + encodeURIComponent(id)).then(function (rec) {
      if (rec.kind === 'research') return researchRun(id, head, box);
      scriptRun(rec, head, box);
    }).catch(function (e) { if (e.status) box.appendChild(el('p', { 'class': 'error', text: e.message })); });
  }

  function researchRun(id, head, box) {
    function show(r) {
      head.innerHTML = '';
      var req = r.request || {};
      head.appendChild(kv([['status', badge(r.status)], ['created', fmtTime(r.createdAt)], ['finished', fmtTime(r.finishedAt)], ['market', (req.exchange || '') + ' ' + (req.symbol || '') + ' ' + (req.binSize || '')]]));
      if (req.code) { head.appendChild(el('h2', { text: 'Code' })); head.appendChild(el('pre', { 'class': 'light', id: 'run-code', text: req.code })); }
      if (r.ok !== undefined && r.ok !== null) renderResearch(box, r);
      else box.textContent = 'Waiting for the result…';
      return r;
    }
    (function poll() {
      api('GET', ROOT + '/v1/research/runs/' + encodeURIComponent(id) + '?wait=30').then(function (r) {
        show(r);
        if (r.ok === undefined || r.ok === null) poll();
      }).catch(function () {});
    })();
  }

  // follow reads a run's output as Server-Sent Events over fetch (so the
  // token goes in a header), calling out(stream, text) and then end(run).
  function follow(id, out, end) {
    var ac = new AbortController();
    aborts.push(ac);
    fetch(SP + '/runs/' + encodeURIComponent(id) + '/logs?stream=both&tail_bytes=0&follow=true', { headers: headers(false), signal: ac.signal }).then(function (r) {
      var reader = r.body.getReader(), dec = new TextDecoder(), buf = '', ev = '', data = [];
      function pump() {
        return reader.read().then(function (x) {
          if (x.done) return;
          buf += dec.decode(x.value, { stream: true });
          var i;
          while ((i = buf.indexOf('\n')) >= 0) {
            var line = buf.slice(0, i); buf = buf.slice(i + 1);
            if (line.indexOf('event: ') === 0) ev = line.slice(7);
            else if (line.indexOf('data: ') === 0) data.push(line.slice(6));
            else if (line === '' && ev) {
              var text = data.join('\n');
              if (ev === 'end') { end(JSON.parse(text)); return; }
              out(ev, text);
              ev = ''; data = [];
            }
          }
          return pump();
        });
      }
      return pump();
    }).catch(function () {});
  }

  function scriptRun(rec, head, box) {
    var status = el('span', { id: 'run-status' }, [badge(rec.status)]);
    var rc = el('div', { id: 'run-rc', text: rec.return_code == null ? '–' : String(rec.return_code) });
    var stop = el('button', { 'class': 'danger', id: 'stop', text: 'Stop', onclick: function () {
      stop.disabled = true;
      api('POST', SP + '/runs/' + encodeURIComponent(rec.run_id) + '/stop').then(update).catch(function (e) { stop.disabled = false; if (e.status) flash(e.message); });
    } });
    var attempt = el('div', { id: 'run-attempt' });
    var restarts = el('tbody', { id: 'restarts' });
    var restartsBox = el('div', { hidden: 'hidden' }, [el('h2', { text: 'Restarts' }),
      el('table', {}, [el('thead', {}, [el('tr', {}, ['Attempt', 'Ended', 'Why', 'Return code', 'Back-off'].map(function (h) { return el('th', { text: h }); }))]), restarts])]);
    function update(r) {
      status.innerHTML = ''; status.appendChild(badge(r.status));
      rc.textContent = r.return_code == null ? '–' : String(r.return_code);
      var ended = window.PYRUNNER.terminal.indexOf(r.status) >= 0;
      stop.disabled = ended;
      errBox.textContent = r.error || '';
      attempt.textContent = String(r.attempt || 1) + (r.status === 'restarting' && r.restart_at ? ' (next at ' + fmtTime(r.restart_at) + ')' : '');
      restarts.innerHTML = '';
      (r.restarts || []).forEach(function (x) {
        restarts.appendChild(el('tr', { 'data-attempt': String(x.attempt) }, [el('td', { text: String(x.attempt) }), el('td', { text: fmtTime(x.at) }), el('td', { text: x.reason }),
          el('td', { text: x.return_code == null ? '–' : String(x.return_code) }), el('td', { text: x.delay_sec + ' s' })]));
      });
      if ((r.restarts || []).length) restartsBox.removeAttribute('hidden');
      return ended;
    }
    var errBox = el('p', { 'class': 'error', id: 'run-error' });
    head.appendChild(kv([['script', rec.script], ['argv', el('code', { text: (rec.argv || []).join(' ') })], ['status', status], ['attempt', attempt], ['return code', rc],
      ['pid', rec.pid], ['worker', rec.worker], ['started', fmtTime(rec.started_at)]]));
    head.appendChild(el('div', { 'class': 'row' }, [stop]));
    head.appendChild(errBox);
    head.appendChild(restartsBox);
    // Between attempts the output stream goes on, but status, attempt and
    // restarts change: look at the record every 2 s until the run ends.
    if (!update(rec)) {
      every(2000, function () { api('GET', SP + '/runs/' + encodeURIComponent(rec.run_id)).then(update).catch(function () {}); });
    }
    var out = el('pre', { id: 'logs' });
    box.appendChild(el('h2', { text: 'Output (live)' }));
    box.appendChild(out);
    follow(rec.run_id, function (stream, text) {
      out.appendChild(stream === 'stderr' ? el('span', { style: 'color:#fca5a5', text: text }) : document.createTextNode(text));
      out.scrollTop = out.scrollHeight;
    }, update);
  }

  function researchPage() {
    var now = Math.floor(Date.now() / 1000);
    main.appendChild(el('h1', { text: 'Research' }));
    var market = el('select', { id: 'market' });
    var binSize = el('select', { id: 'bin-size' }, ['1m', '5m', '15m', '1h', '4h', '1d'].map(function (b) { return el('option', { value: b, text: b }); }));
    function dt(v) { return new Date(v * 1000).toISOString().slice(0, 16); }
    var start = el('input', { type: 'datetime-local', id: 'start', value: dt(now - 86400) });
    var end = el('input', { type: 'datetime-local', id: 'end', value: dt(now) });
    var code = el('textarea', { id: 'code', spellcheck: 'false' });
    code.value = "import matplotlib.pyplot as plt\nplt.plot(df.time, df.close)\nresult = df.close.describe()";
    var run = el('button', { id: 'run', text: 'Run' });
    var box = el('div', { 'class': 'card', id: 'answer' });
    // The same run from Python (clients/python), with this form's values.
    var pyCall = el('pre', { id: 'python-call', 'class': 'muted' });
    function showPython() {
      var parts = market.value.split(' '), q = JSON.stringify;
      pyCall.textContent = 'from pyrunner import Client  # pip install ./clients/python; in Jupyter: %load_ext pyrunner\n' +
        'r = Client(' + q(location.origin + ROOT) + ').research(code, exchange=' + q(parts[0] || 'binance') +
        ', symbol=' + q(parts[1] || '') + ', bin_size=' + q(binSize.value) + ',\n    start=' + q(start.value.replace('T', ' ')) +
        ', end=' + q(end.value.replace('T', ' ')) + ')';
    }
    [market, binSize, start, end].forEach(function (x) { x.addEventListener('change', showPython); });
    main.appendChild(el('div', { 'class': 'card' }, [
      el('div', { 'class': 'row' }, [el('label', {}, ['Market', market]), el('label', {}, ['Candles', binSize]), el('label', {}, ['From (UTC)', start]), el('label', {}, ['To (UTC)', end])]),
      el('p', { 'class': 'muted help', id: 'globals' }, ['Your code sees ', el('code', { text: 'df' }), ' (start, open, high, low, close, volume, turnover, trades, time), ', el('code', { text: 'pd' }), ', ', el('code', { text: 'np' }),
        ' and ', el('code', { text: 'load_kline(exchange, symbol, binSize, start, end, limit=0)' }), '. Set ', el('code', { text: 'result' }), ' to return JSON; open matplotlib figures come back as charts.']),
      code, el('div', { 'class': 'row' }, [run]), pyCall]));
    main.appendChild(box);
    showPython();
    api('GET', ROOT + '/v1/research/markets').then(function (d) {
      var seen = {};
      (d.markets || []).forEach(function (m) {
        var k = m.exchange + ' ' + m.symbol;
        if (seen[k]) return; seen[k] = 1;
        market.appendChild(el('option', { value: k, text: k + ' (' + m.binSize + ')' }));
        if (m.last) { end.value = dt(m.last); start.value = dt(m.last - 86400); }
      });
      if (!market.options.length) market.appendChild(el('option', { value: '', text: 'no markets reported by the workers' }));
      showPython();
    }).catch(function () {});
    function unix(v) { return Math.floor(new Date(v + 'Z').getTime() / 1000); }
    run.addEventListener('click', function () {
      var parts = market.value.split(' ');
      showPython();
      run.disabled = true;
      box.textContent = 'Running…';
      api('POST', ROOT + '/v1/research/run', { exchange: parts[0], symbol: parts[1], binSize: binSize.value, start: unix(start.value), end: unix(end.value), code: code.value })
        .then(function (r) { renderResearch(box, r); box.appendChild(el('p', {}, [link('runs/' + r.id, 'Open this run')])); })
        .catch(function (e) { box.innerHTML = ''; if (e.status) box.appendChild(el('p', { 'class': 'error', id: 'run-error', text: e.message })); })
        .then(function () { run.disabled = false; });
    });
  }

  function scriptsPage() {
    main.appendChild(el('h1', { text: 'Scripts' }));
    var body = el('tbody', { id: 'scripts' });
    var all = el('button', { 'class': 'secondary', id: 'start-all', text: 'Start all', onclick: function () {
      if (!confirm('Start every script of the folder (those already running are skipped)?')) return;
      api('POST', SP + '/runs/all').then(function (d) { flash(''); alert(d.count + ' scripts: ' + d.results.map(function (x) { return x.script + ' ' + x.status; }).join(', ')); }).catch(function (e) { if (e.status) flash(e.message); });
    } });
    var stopAll = el('button', { 'class': 'danger', id: 'stop-all', text: 'Stop all', onclick: function () {
      if (!confirm('Stop every running script?')) return;
      api('POST', SP + '/runs/stop_all').then(function (d) { alert(d.count + ' runs stopped'); }).catch(function (e) { if (e.status) flash(e.message); });
    } });
    main.appendChild(el('div', { 'class': 'row' }, [all, stopAll]));
    main.appendChild(el('table', {}, [el('thead', {}, [el('tr', {}, ['Script', 'Size', 'Args', 'Env (KEY=value, one a line)', 'Restart', ''].map(function (h) { return el('th', { text: h }); }))]), body]));
    api('GET', SP + '/scripts').then(function (d) {
      d.scripts.forEach(function (s) {
        var args = el('input', { placeholder: '--flag value', 'data-args': s.path });
        var env = el('textarea', { style: 'min-height:34px;width:220px', 'data-env': s.path });
        var restart = el('select', { 'data-restart': s.path }, ['no', 'on-failure', 'always'].map(function (p) { return el('option', { value: p, text: p }); }));
        var start = el('button', { text: 'Start', 'data-start': s.path, onclick: function () {
          var e = {};
          env.value.split('\n').forEach(function (l) { var i = l.indexOf('='); if (i > 0) e[l.slice(0, i).trim()] = l.slice(i + 1); });
          api('POST', SP + '/runs', { script: s.path, args: args.value.trim() ? args.value.trim().split(/\s+/) : [], env: e, restart: restart.value === 'no' ? undefined : { policy: restart.value } })
            .then(function (r) { go('runs/' + r.run_id); }).catch(function (err) { if (err.status) flash(err.message); });
        } });
        body.appendChild(el('tr', {}, [el('td', { text: s.path }), el('td', { text: s.size_bytes + ' B' }), el('td', {}, [args]), el('td', {}, [env]), el('td', {}, [restart]), el('td', {}, [start])]));
      });
    }).catch(function () {});
  }

  function schedulesPage() {
    var body = el('tbody', { id: 'schedules' });
    main.appendChild(el('h1', { text: 'Schedules' }));
    main.appendChild(el('table', {}, [el('thead', {}, [el('tr', {}, ['Name', 'Cron', 'Kind', 'Next firing', 'Last firing', '', ''].map(function (h) { return el('th', { text: h }); }))]), body]));
    function act(method, path, body) {
      return api(method, SP + '/schedules/' + path, body).then(load).catch(function (e) { if (e.status) flash(e.message); });
    }
    function load() {
      api('GET', SP + '/schedules').then(function (d) {
        body.innerHTML = '';
        d.schedules.forEach(function (sc) {
          var id = encodeURIComponent(sc.id);
          var last = sc.last_result ? [sc.last_result + ' ' + fmtTime(sc.last_fire_at) + ' ', sc.last_run_id ? link('runs/' + sc.last_run_id, sc.last_run_id.slice(0, 8)) : null] : ['–'];
          var pause = el('button', { 'class': 'secondary', 'data-pause': sc.id, text: sc.paused ? 'Resume' : 'Pause', onclick: function () { act('PATCH', id, { paused: !sc.paused }); } });
          var trigger = el('button', { 'class': 'secondary', 'data-trigger': sc.id, text: 'Trigger', onclick: function () { act('POST', id + '/trigger'); } });
          var del = el('button', { 'class': 'danger', 'data-delete': sc.id, text: 'Delete', onclick: function () { if (confirm('Delete schedule ' + sc.name + '?')) act('DELETE', id); } });
          body.appendChild(el('tr', { 'data-schedule': sc.id }, [el('td', { text: sc.name }), el('td', {}, [el('code', { text: sc.cron }), ' ' + sc.timezone]), el('td', { text: sc.kind }),
            el('td', { 'class': 'next', text: sc.paused ? 'paused' : fmtTime(sc.next_fire_at) }), el('td', { 'class': 'last' }, last), el('td', {}, [pause, ' ', trigger]), el('td', {}, [del])]));
        });
        if (!d.schedules.length) body.appendChild(el('tr', {}, [el('td', { colspan: '7', 'class': 'muted', text: 'No schedules yet.' })]));
      }).catch(function () {});
    }
    var f = { name: el('input', { id: 's-name', placeholder: 'daily report' }), cron: el('input', { id: 's-cron', placeholder: '5 0 * * * or @every 30s' }),
      tz: el('input', { id: 's-tz', value: 'UTC' }), kind: el('select', { id: 's-kind' }, ['script', 'research'].map(function (k) { return el('option', { value: k, text: k }); })),
      overlap: el('select', { id: 's-overlap' }, ['skip', 'allow'].map(function (k) { return el('option', { value: k, text: k }); })),
      request: el('textarea', { id: 's-request', style: 'width:100%;min-height:60px', placeholder: '{"script": "reports/daily.py"}' }) };
    var create = el('button', { id: 's-create', text: 'Create', onclick: function () {
      var req;
      try { req = JSON.parse(f.request.value); } catch (e) { return flash('request: not JSON: ' + e.message); }
      api('POST', SP + '/schedules', { name: f.name.value, cron: f.cron.value, timezone: f.tz.value, kind: f.kind.value, overlap: f.overlap.value, request: req })
        .then(function () { flash(''); load(); }).catch(function (e) { if (e.status) flash(e.message); });
    } });
    main.appendChild(el('h2', { text: 'New schedule' }));
    main.appendChild(el('div', { 'class': 'filters' }, [el('label', {}, ['Name', f.name]), el('label', {}, ['Cron', f.cron]), el('label', {}, ['Time zone', f.tz]),
      el('label', {}, ['Kind', f.kind]), el('label', {}, ['Overlap', f.overlap])]));
    main.appendChild(el('label', {}, ['Request (the body of POST /v1/runs or /v1/research/run)', f.request]));
    main.appendChild(el('div', { 'class': 'row' }, [create]));
    every(2000, load);
  }

  function systemPage() {
    main.appendChild(el('h1', { text: 'Workers & queues' }));
    main.appendChild(el('p', {}, [el('a', { href: ROOT + '/monitor/', text: 'asynqmon (queue UI)' }), ' · ', el('a', { href: ROOT + '/docs', text: 'API docs (Swagger UI)' }), ' · ', el('a', { href: ROOT + '/metrics', text: 'metrics' })]));
    var w = el('tbody', { id: 'workers' }), q = el('tbody', { id: 'queues' });
    main.appendChild(el('h2', { text: 'Workers' }));
    main.appendChild(el('table', {}, [el('thead', {}, [el('tr', {}, ['Worker', 'Executor', 'Sandbox', 'Active runs', 'Slots (research / scripts)', 'DB', 'Last heartbeat'].map(function (h) { return el('th', { text: h }); }))]), w]));
    main.appendChild(el('h2', { text: 'Queues' }));
    main.appendChild(el('table', {}, [el('thead', {}, [el('tr', {}, ['Queue', 'Pending', 'Active', 'Cap'].map(function (h) { return el('th', { text: h }); }))]), q]));
    every(2000, function () {
      api('GET', ROOT + '/health').then(function (h) {
        w.innerHTML = ''; q.innerHTML = '';
        h.workers.forEach(function (x) {
          w.appendChild(el('tr', {}, [el('td', { text: x.id }), el('td', { text: x.executor + (x.ready ? '' : ' (starting)') }), el('td', { text: x.sandbox + (x.sandbox_note ? ' — ' + x.sandbox_note : '') }),
            el('td', { text: String(x.active_runs) }), el('td', { text: x.research_concurrency + ' / ' + x.script_concurrency }), el('td', { text: x.db_type }), el('td', { text: fmtTime(x.last_heartbeat) })]));
        });
        Object.keys(h.queues).forEach(function (n) {
          var s = h.queues[n];
          q.appendChild(el('tr', {}, [el('td', { text: n }), el('td', { text: String(s.pending) }), el('td', { text: String(s.active) }), el('td', { text: s.max_queued ? String(s.max_queued) : '–' })]));
        });
      }).catch(function () {});
    });
  }

  route();
})();
