// The citygate web console: the catalog for anyone; for a signed-in key, subscriptions, a
// live chart (Server-Sent Events) and history (the query API). Every action is a documented
// API call. Provider-supplied text is only ever set as text (textContent), never as HTML.
'use strict';

const state = { me: null, live: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'on') {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = sessionStorage.getItem('cg_csrf') || '';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const error = new Error((data && data.message) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function show(...nodes) {
  const main = document.getElementById('main');
  main.replaceChildren(...nodes);
  main.focus();
}

function failed(error) {
  return el('p', { class: 'error', role: 'alert' }, error.message || String(error));
}

function money(minor, currency) {
  return `${(minor / 100).toFixed(2)} ${currency}`;
}

function planTerms(plan) {
  const terms = [];
  if (plan.kind === 'free') terms.push('free');
  if (plan.kind === 'monthly') terms.push(`${money(plan.price_minor, plan.currency)} a month`);
  if (plan.kind === 'metered') terms.push(`${money(plan.per_1000_minor, plan.currency)} per 1000 readings`);
  if (plan.delay && plan.delay !== '0s') terms.push(`delayed ${plan.delay}`);
  if (plan.aggregate) terms.push(`aggregates over ${plan.aggregate}`);
  terms.push(plan.history ? `history ${plan.history}` : 'all history');
  return terms.join(' · ');
}

function ago(micros) {
  if (!micros) return 'no reading yet';
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - micros / 1e6));
  return seconds < 120 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function quality(q) {
  return el('ul', { class: 'figures', 'aria-label': 'quality' },
    el('li', {}, `last reading ${ago(q.last_reading_at)}`),
    el('li', {}, `${q.readings_last_hour} readings/h`),
    el('li', {}, `${q.active_sensors_last_hour} active sensors`),
    el('li', {}, `${(q.reject_rate * 100).toFixed(1)} % rejected`));
}

async function catalog() {
  const page = await api('GET', '/v1/catalog?per_page=200');
  show(
    el('h1', {}, 'Datasets'),
    el('ul', { class: 'cards', id: 'catalog' }, page.items.map((d) => el('li', { class: 'card', 'data-dataset': d.id },
      el('h2', {}, el('a', { href: `#/dataset/${encodeURIComponent(d.id)}` }, d.title)),
      el('p', { class: 'muted' }, `${d.publisher} · ${d.licence}`),
      el('p', {}, d.description),
      quality(d.quality),
      el('p', {}, d.plans.length ? `${d.plans.length} plan(s): ${d.plans.map((p) => p.name).join(', ')}` : 'no plan on offer')))));
}

function snippets(id) {
  const origin = location.origin;
  const host = location.hostname;
  return [
    ['curl', `curl -N "${origin}/v1/datasets/${id}/live" -H "Authorization: Bearer $KEY"`],
    ['mosquitto_sub', `mosquitto_sub -h ${host} -u subscriber -P "$KEY" -q 1 -v -t 'citygate/${id}/#'`],
    ['DuckDB', `curl -s "${origin}/v1/datasets/${id}/history?format=parquet" -H "Authorization: Bearer $KEY" -o ${id}.parquet\nduckdb -c "SELECT * FROM '${id}.parquet' LIMIT 10"`],
    ['Python', `import pyarrow as pa, urllib.request\nreq = urllib.request.Request("${origin}/v1/datasets/${id}/history?format=arrow", headers={"Authorization": "Bearer " + KEY})\ndf = pa.ipc.open_stream(urllib.request.urlopen(req)).read_all().to_pandas()`],
  ].map(([name, code]) => [el('h3', {}, name), el('pre', {}, el('code', {}, code))]);
}

// Whether the signed-in key may read dataset `d`: its provider, an admin, or an active
// subscription (asked without a request that could be refused).
async function entitled(d) {
  if (!state.me) return false;
  const { role, id } = state.me.account;
  if (role === 'admin' || (role === 'provider' && d.provider === id)) return true;
  const subscriptions = await api('GET', '/v1/subscriptions');
  return subscriptions.some((s) => s.dataset === d.id && s.status === 'active');
}

async function dataset(id) {
  const d = await api('GET', `/v1/catalog/${encodeURIComponent(id)}`);
  const mayRead = await entitled(d);
  const numeric = d.fields.filter((f) => f.type === 'float' || f.type === 'int');
  const plans = el('ul', { id: 'plans' }, d.plans.map((p) => el('li', {},
    el('strong', {}, p.name), ` (${p.kind}): ${planTerms(p)} `,
    state.me ? el('button', { type: 'button', class: 'secondary', 'data-plan': p.id, on: { click: () => subscribe(p) } }, 'Subscribe') : null)));
  const parts = [
    el('h1', {}, d.title),
    el('p', { class: 'muted' }, `${d.publisher} · ${d.licence} · provider ${d.provider}`),
    el('p', {}, d.description),
    quality(d.quality),
    el('h2', {}, 'Schema'),
    el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'field'), el('th', {}, 'type'), el('th', {}, 'unit'))),
      el('tbody', {}, d.fields.map((f) => el('tr', {}, el('td', {}, f.name), el('td', {}, f.type), el('td', {}, f.unit || ''))))),
    el('h2', {}, 'Plans'),
    d.plans.length ? plans : el('p', {}, 'No plan on offer yet.'),
    el('p', { id: 'subscribe-status', role: 'status' }),
  ];
  if (mayRead && numeric.length) {
    parts.push(liveSection(d, numeric), historySection(d, numeric));
  } else if (state.me) {
    parts.push(el('p', { id: 'not-subscribed' }, 'Subscribe to a plan to watch it live and chart its history.'));
  } else {
    parts.push(el('p', {}, el('a', { href: '#/signin' }, 'Sign in'), ' to subscribe, watch it live and chart its history.'));
  }
  parts.push(el('h2', {}, 'How to connect'), ...snippets(d.id).flat());
  show(...parts);
}

async function subscribe(plan) {
  const status = document.getElementById('subscribe-status');
  try {
    const made = await api('POST', '/v1/subscriptions', { plan: plan.id });
    if (made && made.checkout) {
      // A paid plan starts once paid: the checkout is the payment provider's (or, with
      // manual payments, an invoice to settle); only a web address becomes a link.
      const url = String(made.checkout.url || '');
      const link = /^(https:\/\/|\/)/.test(url) ? el('a', { href: url }, 'complete the payment') : url;
      status.replaceChildren(`${plan.name} starts once paid: `, link);
    } else {
      await route();
      document.getElementById('subscribe-status').textContent = `Subscribed to ${plan.name}.`;
    }
  } catch (error) {
    status.replaceChildren(failed(error));
  }
}

// A line chart on a canvas: points [x, y] (x in ms), drawn in one pass.
function draw(canvas, points, label) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth * ratio;
  const height = canvas.clientHeight * ratio;
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, width, height);
  if (!points.length) return;
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [x, y] of points) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += 1; y0 -= 1; }
  const pad = 30 * ratio;
  const sx = (x) => pad + ((x - x0) / (x1 - x0)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - y0) / (y1 - y0)) * (height - 2 * pad);
  g.strokeStyle = '#0b5cad';
  g.lineWidth = 1.5 * ratio;
  g.beginPath();
  points.forEach(([x, y], i) => (i ? g.lineTo(sx(x), sy(y)) : g.moveTo(sx(x), sy(y))));
  g.stroke();
  if (points.length === 1) {
    g.fillStyle = '#0b5cad';
    g.fillRect(sx(points[0][0]) - 3 * ratio, sy(points[0][1]) - 3 * ratio, 6 * ratio, 6 * ratio);
  }
  g.fillStyle = '#5a6470';
  g.font = `${12 * ratio}px system-ui`;
  g.fillText(`${label}: ${y0.toFixed(1)} – ${y1.toFixed(1)}`, pad, pad - 8 * ratio);
}

function fieldPicker(id, numeric) {
  return el('select', { id }, numeric.map((f) => el('option', { value: f.name }, f.name)));
}

function liveSection(d, numeric) {
  const canvas = el('canvas', { id: 'live-chart', role: 'img', 'aria-label': `live ${d.title}` });
  const count = el('span', { id: 'live-count' }, '0');
  const note = el('span', { id: 'live-note', class: 'muted' });
  const picker = fieldPicker('live-field', numeric);
  const points = [];
  let dirty = false;
  if (state.live) state.live.close();
  const source = new EventSource(`/v1/datasets/${encodeURIComponent(d.id)}/live`);
  state.live = source;
  const take = (event, aggregated) => {
    const r = JSON.parse(event.data);
    const values = r.fields || r.values || {};
    const v = values[picker.value] ?? values[`${picker.value}_mean`];
    if (typeof v !== 'number') return;
    points.push([(r.time ?? r.ts ?? Date.now() * 1000) / 1000, v]);
    if (points.length > 2000) points.splice(0, points.length - 2000);
    count.textContent = String(Number(count.textContent) + 1);
    if (aggregated) note.textContent = 'this plan delivers aggregates';
    if (!dirty) { dirty = true; requestAnimationFrame(() => { dirty = false; draw(canvas, points, picker.value); }); }
  };
  source.addEventListener('reading', (e) => take(e, false));
  source.addEventListener('aggregate', (e) => take(e, true));
  source.addEventListener('end', (e) => { note.textContent = `feed ended: ${e.data}`; source.close(); });
  picker.addEventListener('change', () => { points.length = 0; count.textContent = '0'; });
  return el('section', { 'aria-labelledby': 'live-title' },
    el('h2', { id: 'live-title' }, 'Live'),
    el('div', { class: 'row' }, el('label', { for: 'live-field' }, 'Field'), picker,
      el('span', {}, 'readings received: ', count), note),
    canvas);
}

function iso(date) { return date.toISOString().replace(/\.\d+Z$/, 'Z'); }

function historySection(d, numeric) {
  const canvas = el('canvas', { id: 'history-chart', role: 'img', 'aria-label': `history ${d.title}` });
  const picker = fieldPicker('history-field', numeric);
  const range = el('select', { id: 'history-range' },
    [['1h', 1, '1m'], ['6h', 6, '15m'], ['24h', 24, '1h'], ['7d', 168, '6h']].map(([name, hours, every]) =>
      el('option', { value: `${hours}|${every}` }, `last ${name}, buckets of ${every}`)));
  range.value = '6|15m';
  const status = el('p', { id: 'history-status', role: 'status' });
  const table = el('tbody', { id: 'history-rows' });
  const download = el('a', { id: 'history-csv', download: `${d.id}.csv` }, 'Download CSV');
  const load = async () => {
    const [hours, every] = range.value.split('|');
    const from = iso(new Date(Date.now() - hours * 3600e3));
    const q = `from=${from}&every=${every}&fn=mean&group_by=none&fields=${encodeURIComponent(picker.value)}`;
    download.href = `/v1/datasets/${encodeURIComponent(d.id)}/history?format=csv&from=${from}&limit=10000`;
    try {
      const answer = await api('GET', `/v1/datasets/${encodeURIComponent(d.id)}/aggregate?${q}`);
      const key = `${picker.value}_mean`;
      const points = answer.buckets.filter((b) => typeof b[key] === 'number').map((b) => [Date.parse(b.bucket), b[key]]);
      draw(canvas, points, picker.value);
      table.replaceChildren(...answer.buckets.map((b) => el('tr', {}, el('td', {}, b.bucket), el('td', {}, b[key] ?? ''))));
      status.textContent = `${points.length} buckets`;
    } catch (error) {
      status.replaceChildren(failed(error));
    }
  };
  picker.addEventListener('change', load);
  range.addEventListener('change', load);
  setTimeout(load, 0);
  return el('section', { 'aria-labelledby': 'history-title' },
    el('h2', { id: 'history-title' }, 'History'),
    el('div', { class: 'row' }, el('label', { for: 'history-field' }, 'Field'), picker,
      el('label', { for: 'history-range' }, 'Range'), range, download),
    canvas, status,
    el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'bucket'), el('th', {}, 'mean'))), table));
}

function signinPage() {
  const key = el('input', { id: 'key', type: 'password', autocomplete: 'off', required: true });
  const status = el('p', { id: 'signin-status', role: 'status' });
  const form = el('form', { id: 'signin-form', on: { submit: async (event) => {
    event.preventDefault();
    try {
      const response = await fetch('/v1/sessions', {
        method: 'POST', credentials: 'same-origin',
        headers: { Authorization: `Bearer ${key.value.trim()}`, Accept: 'application/json' },
      });
      key.value = '';
      const body = await response.json();
      if (!response.ok) throw new Error(body.message || 'sign-in failed');
      sessionStorage.setItem('cg_csrf', body.csrf_token);
      await whoami();
      location.hash = '#/me';
    } catch (error) {
      status.replaceChildren(failed(error));
    }
  } } },
  el('label', { for: 'key' }, 'API key'), key, ' ', el('button', { type: 'submit' }, 'Sign in'));
  show(el('h1', {}, 'Sign in'),
    el('p', {}, 'Your key is exchanged for a session of this browser; it is not kept here.'),
    form, status);
}

async function mePage() {
  if (!state.me) { location.hash = '#/signin'; return; }
  const [subscriptions, usage] = await Promise.all([
    api('GET', '/v1/subscriptions').catch(() => null),
    api('GET', '/v1/usage').catch(() => null),
  ]);
  const subs = subscriptions || [];
  show(
    el('h1', {}, state.me.account.name),
    el('p', { class: 'muted' }, `${state.me.account.role} · key ${state.me.key.id}`),
    el('h2', {}, 'Subscriptions'),
    Array.isArray(subs) && subs.length
      ? el('ul', { id: 'subscriptions' }, subs.map((s) => el('li', {}, `${s.dataset}: ${s.plan} (${s.status})`)))
      : el('p', {}, 'None yet: pick a dataset in the catalog.'),
    el('h2', {}, 'Usage'),
    el('pre', { id: 'usage' }, usage ? JSON.stringify(usage, null, 2) : 'no usage'));
}

async function whoami() {
  // Signed in only if this tab holds a session's CSRF token (the cookie itself is out of
  // the page's reach): no request is made that would be refused.
  state.me = null;
  if (sessionStorage.getItem('cg_csrf')) {
    try {
      state.me = await api('GET', '/v1/me');
    } catch (_) {
      sessionStorage.removeItem('cg_csrf');
    }
  }
  document.getElementById('nav-me').hidden = !state.me;
  document.getElementById('nav-signin').hidden = !!state.me;
  document.getElementById('signout').hidden = !state.me;
}

async function route() {
  if (state.live && !location.hash.startsWith('#/dataset/')) { state.live.close(); state.live = null; }
  const hash = location.hash || '#/';
  try {
    if (hash.startsWith('#/dataset/')) await dataset(decodeURIComponent(hash.slice('#/dataset/'.length)));
    else if (hash === '#/signin') signinPage();
    else if (hash === '#/me') await mePage();
    else await catalog();
  } catch (error) {
    show(failed(error));
  }
}

document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('signout').addEventListener('click', async () => {
    try { await api('DELETE', '/v1/sessions/current'); } catch (_) { /* already over */ }
    sessionStorage.removeItem('cg_csrf');
    await whoami();
    location.hash = '#/';
  });
  window.addEventListener('hashchange', route);
  await whoami();
  await route();
});
