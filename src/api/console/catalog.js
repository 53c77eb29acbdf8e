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

// Every dataset in the catalog, page by page.
export async function everyDataset() {
  const items = [];
  for (let page = 1; ; page += 1) {
    const answer = await api('GET', `/v1/catalog?per_page=200&page=${page}`);
    items.push(...answer.items);
    if (items.length >= answer.total || !answer.items.length) return items;
  }
}

export async function catalog() {
  const hash = location.hash;
  const datasets = await everyDataset();
  // Gone elsewhere meanwhile (signed out, then straight to sign in): that page is shown.
  if (location.hash !== hash) return;
  show(
    el('h1', {}, 'Datasets'),
    el('ul', { class: 'cards', id: 'catalog' }, datasets.map((d) => el('li', { class: 'card', 'data-dataset': d.id },
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
// subscription (asked without a request that could be refused); if so, its grant (delay,
// aggregates only, the plan behind it); and the plans of `d` it holds a live subscription
// to, with their status.
async function entitled(d) {
  const taken = new Map();
  if (!state.me) return { grant: null, taken };
  const { role, id } = state.me.account;
  let mayRead = role === 'admin' || (role === 'provider' && d.provider === id);
  if (role === 'subscriber') {
    const subscriptions = (await api('GET', '/v1/subscriptions')).filter((s) => s.dataset === d.id);
    for (const s of subscriptions) {
      if (['active', 'pending_payment', 'past_due'].includes(s.status)) taken.set(s.plan, s.status.replace('_', ' '));
    }
    // A key limited to other datasets reads none of this one.
    const keyDatasets = state.me.key.datasets;
    mayRead = subscriptions.some((s) => s.status === 'active') && (!keyDatasets.length || keyDatasets.includes(d.id));
  }
  const grant = mayRead ? await api('GET', `/v1/access/${encodeURIComponent(d.id)}`) : null;
  return { grant, taken };
}

// Seconds in a duration as the API writes it (`15m`, `1h 30m`, `2days`).
function seconds(text) {
  const unit = { s: 1, sec: 1, m: 60, min: 60, h: 3600, hour: 3600, hours: 3600, d: 86400, day: 86400, days: 86400 };
  let total = 0;
  for (const [, n, u] of String(text).matchAll(/(\d+)\s*([a-z]+)/g)) total += Number(n) * (unit[u] || 0);
  return total;
}

export async function dataset(id) {
  const d = await api('GET', `/v1/catalog/${encodeURIComponent(id)}`);
  const { grant, taken } = await entitled(d);
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
    mapSection(d),
    el('h2', {}, 'Schema'),
    el('table', {}, el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'field'), el('th', { scope: 'col' }, 'type'), el('th', { scope: 'col' }, 'unit'))),
      el('tbody', {}, d.fields.map((f) => el('tr', {}, el('td', {}, f.name), el('td', {}, f.type), el('td', {}, f.unit || ''))))),
    el('h2', {}, 'Plans'),
    d.plans.length ? plans : el('p', {}, 'No plan on offer yet.'),
    el('p', { id: 'subscribe-status', role: 'status' }),
  ];
  if (grant) {
    // An aggregate-only plan reads windows of at least its length and no raw readings.
    const window = grant.aggregate ? seconds(grant.aggregate) : 0;
    const sections = () => [numeric.length ? [liveSection(d, numeric, window), historySection(d, numeric, window)] : null];
    const plan = grant.plan && d.plans.find((p) => p.id === grant.plan);
    if (grant.plan && (!plan || plan.kind === 'metered')) {
      // A metered plan pays for what it reads: nothing is read until asked for.
      const box = el('div', { id: 'metered' },
        el('p', {}, 'Your plan is billed by the readings it receives: the map, live chart and history load when you ask.'),
        el('button', { type: 'button', id: 'load-metered', on: { click: () => box.replaceChildren(...sections().flat(Infinity).filter(Boolean)) } },
          'Load the map, live chart and history'));
      parts.push(box);
    } else {
      parts.push(sections());
    }
  } else if (state.me) {
    parts.push(el('p', { id: 'not-subscribed' }, 'Subscribe to a plan to see its sensors, watch it live and chart its history.'));
  } else {
    parts.push(el('p', {}, el('a', { href: '#/signin' }, 'Sign in'), ' to subscribe, watch it live and chart its history.'));
  }
  parts.push(el('h2', {}, 'How to connect'), ...snippets(d.id).flat());
  show(...parts);
}

// A link for a web address the API gave, if it is this site's or https; else its text.
function link(url, text) {
  try {
    const target = new URL(url, location.href);
    if (target.origin === location.origin || target.protocol === 'https:') return el('a', { href: target.href }, text);
  } catch (_) { /* not a URL */ }
  return url;
}

async function subscribe(plan) {
  const status = document.getElementById('subscribe-status');
  try {
    const made = await api('POST', '/v1/subscriptions', { plan: plan.id });
    if (made && made.checkout) {
      // A paid plan starts once paid: with manual payments an admin records the payment
      // (an invoice follows); with Stripe the checkout is completed with Stripe.
      const manual = made.subscription.payment_provider === 'manual';
      status.replaceChildren(`${plan.name} starts once paid: `, manual
        ? 'the operator records your payment and the subscription starts then.'
        : link(String(made.checkout.url || ''), 'the checkout'));
    } else {
      await dataset(decodeURIComponent(location.hash.slice('#/dataset/'.length)));
      document.getElementById('subscribe-status').textContent = `Subscribed to ${plan.name}.`;
    }
  } catch (error) {
    status.replaceChildren(failed(error));
  }
}

// Where the sensors are, for anyone: each sensor's last position (readings carry an
// optional lat/lon; the catalog gives positions only), as dots at the zoom that shows them
// all; nothing fetched from elsewhere unless the operator configured a tile server
// (`[console] map_tiles`).
function mapSection(d) {
  const meta = document.querySelector('meta[name="citygate-map-tiles"]');
  const tiles = meta && { url: meta.content, attribution: meta.dataset.attribution };
  const canvas = el('canvas', { id: 'sensor-map', class: 'map', role: 'img', 'aria-label': `sensors of ${d.title}` });
  const status = el('p', { id: 'sensor-map-status', role: 'status' });
  (async () => {
    try {
      const answer = await api('GET', `/v1/catalog/${encodeURIComponent(d.id)}/sensors`);
      const points = answer.positions.map(([lon, lat]) => ({ lon, lat }));
      canvas.hidden = !points.length;
      map(canvas, points, tiles);
      status.textContent = points.length
        ? `${points.length} sensors with a position${answer.complete ? '' : ' (not all shown)'}`
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

function liveSection(d, numeric, window) {
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
  if (window) note.textContent = `this plan delivers each sensor's mean over ${window} s windows`;
  // Readings (or a window's aggregates: the mean, at the window's end) are counted as they
  // come and drawn at most once a frame, however fast.
  const take = (event, aggregated) => {
    const r = JSON.parse(event.data);
    const value = (r.fields || {})[picker.value];
    const v = aggregated ? value && value.mean : value;
    if (typeof v !== 'number') return;
    points.push([(aggregated ? r.window_end : r.time) / 1000, v]);
    if (points.length > 2000) points.splice(0, points.length - 2000);
    received += 1;
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
      el('span', {}, window ? 'windows received: ' : 'readings received: ', count), note),
    canvas);
}

// History in buckets from the query API; downloads of the raw readings (an aggregate-only
// plan, with a `window`, gets buckets of at least its window and no raw downloads).
function historySection(d, numeric, window) {
  const canvas = el('canvas', { id: 'history-chart', role: 'img', 'aria-label': `history ${d.title}` });
  const picker = fieldPicker('history-field', numeric);
  const ranges = [['1h', 1, '1m', 60], ['6h', 6, '15m', 900], ['24h', 24, '1h', 3600], ['7d', 168, '6h', 21600]]
    .filter(([, hours, , every]) => every >= window && hours * 3600 > window);
  if (!ranges.length) ranges.push([`${Math.ceil(window / 3600) * 4}h`, Math.ceil(window / 3600) * 4, `${window}s`, window]);
  const range = el('select', { id: 'history-range' }, ranges.map(([name, hours, every]) =>
    el('option', { value: `${hours}|${every}` }, `last ${name}, buckets of ${every}`)));
  range.value = ranges.some(([, hours]) => hours === 6) ? '6|15m' : range.options[0].value;
  const status = el('p', { id: 'history-status', role: 'status' });
  const rows = el('tbody', { id: 'history-rows' });
  const csv = el('a', { id: 'history-csv', download: `${d.id}.csv` }, 'Download CSV (up to 10 000 readings)');
  const parquet = el('a', { id: 'history-parquet', download: `${d.id}-history.parquet` }, 'Download Parquet (up to 10 000)');
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
      el('label', { for: 'history-range' }, 'Range'), range, window ? null : [csv, parquet]),
    canvas, status,
    el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': 'history table' }, el('table', {}, el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'bucket'), el('th', { scope: 'col' }, 'mean'))), rows)));
}
