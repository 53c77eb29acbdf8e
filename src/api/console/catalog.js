// Anyone's pages: the catalog and a dataset's page (schema, plans, sensors on a map, how to
// connect); for a key that may read the dataset, its live chart (Server-Sent Events) and
// history (the query API).

import { state, el, api, show, failed, money, ago, iso } from './ui.js';
import { lines, map } from './chart.js';

export function planTerms(plan) {
  const terms = [];
  if (plan.kind === 'free') terms.push('free');
  if (plan.kind === 'monthly') terms.push(`${money(plan.price_minor, plan.currency)} a month`);
  if (plan.kind === 'metered') terms.push(`${money(plan.per_1000_minor, plan.currency)} per 1000 readings`);
  if (plan.delay && plan.delay !== '0s') terms.push(`delayed ${plan.delay}`);
  if (plan.aggregate) terms.push(`aggregates over ${plan.aggregate}`);
  terms.push(plan.history ? `history ${plan.history}` : 'all history');
  return terms.join(' · ');
}

function quality(q) {
  return el('ul', { class: 'figures', 'aria-label': 'quality' },
    el('li', {}, `last reading ${ago(q.last_reading_at)}`),
    el('li', {}, `${q.readings_last_hour} readings/h`),
    el('li', {}, `${q.active_sensors_last_hour} active sensors`),
    el('li', {}, `${(q.reject_rate * 100).toFixed(1)} % rejected`));
}

export async function catalog() {
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
  ].map(([name, code]) => [el('h3', {}, name), el('pre', { tabindex: 0, 'aria-label': `${name} example` }, el('code', {}, code))]);
}

// Whether the signed-in key may read dataset `d`: its provider, an admin, or an active
// subscription (asked without a request that could be refused); and the plans of `d` it
// holds a live subscription to, with their status.
async function entitled(d) {
  const taken = new Map();
  if (!state.me) return { mayRead: false, taken };
  const { role, id } = state.me.account;
  if (role === 'admin' || (role === 'provider' && d.provider === id)) return { mayRead: true, taken };
  if (role !== 'subscriber') return { mayRead: false, taken };
  const subscriptions = (await api('GET', '/v1/subscriptions')).filter((s) => s.dataset === d.id);
  for (const s of subscriptions) {
    if (['active', 'pending_payment', 'past_due'].includes(s.status)) taken.set(s.plan, s.status.replace('_', ' '));
  }
  return { mayRead: subscriptions.some((s) => s.status === 'active'), taken };
}

export async function dataset(id) {
  const d = await api('GET', `/v1/catalog/${encodeURIComponent(id)}`);
  const { mayRead, taken } = await entitled(d);
  const numeric = d.fields.filter((f) => f.type === 'float' || f.type === 'int');
  // A subscriber sees which plans it holds; the others it may subscribe to.
  const offer = (p) => {
    if (taken.has(p.id)) return el('em', {}, `your plan (${taken.get(p.id)})`);
    return state.me && state.me.account.role === 'subscriber'
      ? el('button', { type: 'button', class: 'secondary', 'data-plan': p.id, on: { click: () => subscribe(p) } }, `Subscribe to ${p.name}`)
      : null;
  };
  const plans = el('ul', { id: 'plans' }, d.plans.map((p) => el('li', {},
    el('strong', {}, p.name), ` (${p.kind}): ${planTerms(p)} `, offer(p))));
  const parts = [
    el('h1', {}, d.title),
    el('p', { class: 'muted' }, `${d.publisher} · ${d.licence} · provider ${d.provider}`),
    el('p', {}, d.description),
    quality(d.quality),
    el('h2', {}, 'Schema'),
    el('table', {}, el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'field'), el('th', { scope: 'col' }, 'type'), el('th', { scope: 'col' }, 'unit'))),
      el('tbody', {}, d.fields.map((f) => el('tr', {}, el('td', {}, f.name), el('td', {}, f.type), el('td', {}, f.unit || ''))))),
    el('h2', {}, 'Plans'),
    d.plans.length ? plans : el('p', {}, 'No plan on offer yet.'),
    el('p', { id: 'subscribe-status', role: 'status' }),
  ];
  if (mayRead) {
    parts.push(mapSection(d));
    if (numeric.length) parts.push(liveSection(d, numeric), historySection(d, numeric));
  } else if (state.me) {
    parts.push(el('p', { id: 'not-subscribed' }, 'Subscribe to a plan to see its sensors, watch it live and chart its history.'));
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
      await dataset(decodeURIComponent(location.hash.slice('#/dataset/'.length)));
      document.getElementById('subscribe-status').textContent = `Subscribed to ${plan.name}.`;
    }
  } catch (error) {
    status.replaceChildren(failed(error));
  }
}

// Where the sensors are: the latest position of each sensor that reports one (readings
// carry an optional lat/lon), as dots at the zoom that shows them all; nothing fetched
// from elsewhere unless the operator configured a tile server (`[console] map_tiles`).
function mapSection(d) {
  const meta = document.querySelector('meta[name="citygate-map-tiles"]');
  const tiles = meta && { url: meta.content, attribution: meta.dataset.attribution };
  const canvas = el('canvas', { id: 'sensor-map', class: 'map', role: 'img', 'aria-label': `sensors of ${d.title}` });
  const status = el('p', { id: 'sensor-map-status', role: 'status' });
  (async () => {
    try {
      const answer = await api('GET', `/v1/datasets/${encodeURIComponent(d.id)}/latest?fields=${encodeURIComponent(d.fields[0].name)}`);
      const points = answer.readings.filter((r) => typeof r.lat === 'number' && typeof r.lon === 'number')
        .map((r) => ({ lon: r.lon, lat: r.lat }));
      map(canvas, points, tiles);
      canvas.hidden = !points.length;
      status.textContent = points.length ? `${points.length} of ${answer.readings.length} sensors report a position`
        : 'No sensor reports a position.';
    } catch (error) {
      status.replaceChildren(failed(error));
    }
  })();
  return el('section', { 'aria-labelledby': 'map-title' }, el('h2', { id: 'map-title' }, 'Sensors'), canvas, status);
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
  let received = 0;
  let dirty = false;
  if (state.live) state.live.close();
  const source = new EventSource(`/v1/datasets/${encodeURIComponent(d.id)}/live`);
  state.live = source;
  // Readings are counted as they come and drawn at most once a frame, however fast.
  const take = (event, aggregated) => {
    const r = JSON.parse(event.data);
    const values = r.fields || r.values || {};
    const v = values[picker.value] ?? values[`${picker.value}_mean`];
    if (typeof v !== 'number') return;
    points.push([(r.time ?? r.ts ?? Date.now() * 1000) / 1000, v]);
    if (points.length > 2000) points.splice(0, points.length - 2000);
    received += 1;
    if (aggregated) note.textContent = 'this plan delivers aggregates';
    if (!dirty) {
      dirty = true;
      requestAnimationFrame(() => {
        dirty = false;
        count.textContent = String(received);
        lines(canvas, [{ label: picker.value, points }]);
      });
    }
  };
  source.addEventListener('reading', (e) => take(e, false));
  source.addEventListener('aggregate', (e) => take(e, true));
  source.addEventListener('end', (e) => { note.textContent = `feed ended: ${e.data}`; source.close(); });
  picker.addEventListener('change', () => { points.length = 0; received = 0; count.textContent = '0'; });
  return el('section', { 'aria-labelledby': 'live-title' },
    el('h2', { id: 'live-title' }, 'Live'),
    el('div', { class: 'row' }, el('label', { for: 'live-field' }, 'Field'), picker,
      el('span', {}, 'readings received: ', count), note),
    canvas);
}

function historySection(d, numeric) {
  const canvas = el('canvas', { id: 'history-chart', role: 'img', 'aria-label': `history ${d.title}` });
  const picker = fieldPicker('history-field', numeric);
  const range = el('select', { id: 'history-range' },
    [['1h', 1, '1m'], ['6h', 6, '15m'], ['24h', 24, '1h'], ['7d', 168, '6h']].map(([name, hours, every]) =>
      el('option', { value: `${hours}|${every}` }, `last ${name}, buckets of ${every}`)));
  range.value = '6|15m';
  const status = el('p', { id: 'history-status', role: 'status' });
  const rows = el('tbody', { id: 'history-rows' });
  const csv = el('a', { id: 'history-csv', download: `${d.id}.csv` }, 'Download CSV');
  const parquet = el('a', { id: 'history-parquet', download: `${d.id}-history.parquet` }, 'Download Parquet');
  const load = async () => {
    const [hours, every] = range.value.split('|');
    const from = iso(new Date(Date.now() - hours * 3600e3));
    const q = `from=${from}&every=${every}&fn=mean&group_by=none&fields=${encodeURIComponent(picker.value)}`;
    const raw = `/v1/datasets/${encodeURIComponent(d.id)}/history?from=${from}&limit=10000`;
    csv.href = `${raw}&format=csv`;
    parquet.href = `${raw}&format=parquet`;
    try {
      const answer = await api('GET', `/v1/datasets/${encodeURIComponent(d.id)}/aggregate?${q}`);
      const key = `${picker.value}_mean`;
      const points = answer.buckets.filter((b) => typeof b[key] === 'number').map((b) => [Date.parse(b.bucket), b[key]]);
      lines(canvas, [{ label: `${picker.value} (mean)`, points }]);
      rows.replaceChildren(...answer.buckets.map((b) => el('tr', {}, el('td', {}, b.bucket), el('td', {}, b[key] ?? ''))));
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
      el('label', { for: 'history-range' }, 'Range'), range, csv, parquet),
    canvas, status,
    el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': 'history table' }, el('table', {}, el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'bucket'), el('th', { scope: 'col' }, 'mean'))), rows)));
}
