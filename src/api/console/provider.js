// A provider's pages: its datasets, publishing one (a schema editor that says what is wrong
// before and after sending), a dataset's plans, device keys, intake quality and rejects
// minute by minute, and monthly statements as charts.

import { state, el, api, show, attempt, money, when, table, field, secret } from './ui.js';
import { lines, bars } from './chart.js';
import { planTerms, everyDataset } from './catalog.js';

const RESERVED = ['sensor_id', 'sensor', 'ts', 'time', 'timestamp', 'received_at', 'ts_missing', 'lat', 'lon', 'seq', 'fields'];
const LICENCES = ['CC-BY-4.0', 'CC0-1.0', 'CC-BY-SA-4.0', 'ODbL-1.0', 'commercial'];
const FREQUENCIES = ['continuous', 'hourly', 'daily', 'weekly', 'monthly', 'irregular'];

async function ownDatasets() {
  return (await everyDataset()).filter((d) => state.me.account.role === 'admin' || d.provider === state.me.account.id);
}

export async function providerPage() {
  const datasets = await ownDatasets();
  show(
    el('h1', {}, 'My datasets'),
    el('p', {}, el('a', { href: '#/publish', id: 'publish-link' }, 'Publish a dataset'), ' · ',
      el('a', { href: '#/statements' }, 'Monthly statements')),
    table('my-datasets', [
      ['dataset', (d) => el('a', { href: `#/manage/${encodeURIComponent(d.id)}` }, d.title)],
      ['id', (d) => d.id],
      ['readings/h', (d) => d.quality.readings_last_hour],
      ['rejected', (d) => `${(d.quality.reject_rate * 100).toFixed(1)} %`],
      ['plans', (d) => d.plans.map((p) => p.name).join(', ')],
    ], datasets, 'No dataset yet.'));
}

// What is wrong with one field of the schema editor, or '' (the server checks again).
function fieldProblem(f, names) {
  if (!/^[a-z][a-z0-9_]{0,63}$/.test(f.name)) return 'a name is a lower-case letter, then letters, digits or _ (at most 64)';
  if (RESERVED.includes(f.name)) return `${f.name} is reserved (readings carry it already)`;
  if (names.filter((n) => n === f.name).length > 1) return `${f.name} appears twice`;
  if (f.min !== undefined && f.max !== undefined && f.min > f.max) return 'min is above max';
  return '';
}

function schemaRow(n, onRemove) {
  const cell = (name, attrs) => el('input', { id: `field-${n}-${name}`, 'aria-label': `field ${n + 1} ${name}`, ...attrs });
  const problem = el('span', { id: `field-${n}-problem`, class: 'error' });
  const row = el('tr', { 'data-field': n },
    el('td', {}, cell('name', { required: true, 'aria-describedby': `field-${n}-problem` })),
    el('td', {}, el('select', { id: `field-${n}-type`, 'aria-label': `field ${n + 1} type` },
      ['float', 'int', 'bool', 'string'].map((t) => el('option', { value: t }, t)))),
    el('td', {}, cell('unit', { size: 6 })),
    el('td', {}, cell('min', { type: 'number', step: 'any', size: 6 })),
    el('td', {}, cell('max', { type: 'number', step: 'any', size: 6 })),
    el('td', {}, el('input', { id: `field-${n}-required`, type: 'checkbox', 'aria-label': `field ${n + 1} required` })),
    el('td', {}, el('button', { type: 'button', class: 'secondary', on: { click: () => onRemove(row) } }, `Remove field ${n + 1}`), ' ', problem));
  return row;
}

function readSchema(body) {
  return [...body.querySelectorAll('tr')].map((row) => {
    const n = row.dataset.field;
    const value = (name) => document.getElementById(`field-${n}-${name}`);
    const f = { name: value('name').value.trim(), type: value('type').value };
    if (value('unit').value.trim()) f.unit = value('unit').value.trim();
    if (value('min').value !== '') f.min = Number(value('min').value);
    if (value('max').value !== '') f.max = Number(value('max').value);
    if (value('required').checked) f.required = true;
    return { n, f };
  });
}

export function publishPage() {
  const [idLabel, id] = field('ds-id', 'Id (lower-case letters, digits, -)', { required: true, pattern: '[a-z0-9][a-z0-9\\-]{0,63}' });
  const [titleLabel, title] = field('ds-title', 'Title', { required: true });
  const [descLabel, description] = field('ds-description', 'Description', {});
  const [licLabel, licence] = field('ds-licence', 'Licence', { options: LICENCES.map((l) => [l, l]) });
  const [freqLabel, frequency] = field('ds-frequency', 'Update frequency', { options: FREQUENCIES.map((f) => [f, f]) });
  const [kwLabel, keywords] = field('ds-keywords', 'Keywords (comma-separated)', {});
  const rows = el('tbody', { id: 'schema-rows' });
  let next = 0;
  const add = () => { rows.append(schemaRow(next, (row) => row.remove())); next += 1; };
  add();
  const status = el('div', { id: 'publish-status', role: 'status' });
  const form = el('form', { id: 'publish-form', novalidate: true, on: { submit: (event) => {
    event.preventDefault();
    attempt('publish-status', async () => {
      const schema = readSchema(rows);
      const names = schema.map((s) => s.f.name);
      let wrong = 0;
      for (const { n, f } of schema) {
        const problem = fieldProblem(f, names);
        document.getElementById(`field-${n}-problem`).textContent = problem;
        if (problem) wrong += 1;
      }
      if (!schema.length) throw new Error('a dataset needs at least one field');
      if (wrong) throw new Error(`${wrong} field(s) need a change: see the schema`);
      const made = await api('POST', '/v1/catalog', {
        id: id.value.trim(), title: title.value, description: description.value, licence: licence.value,
        update_frequency: frequency.value, provider: state.me.account.id,
        keywords: keywords.value.split(',').map((k) => k.trim()).filter(Boolean),
        fields: schema.map((s) => s.f),
      });
      location.hash = `#/manage/${encodeURIComponent(made.id)}`;
      return null;
    });
  } } },
  idLabel, id, titleLabel, title, descLabel, description, licLabel, licence, freqLabel, frequency, kwLabel, keywords,
  el('h2', {}, 'Schema'),
  el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': 'schema' }, el('table', {}, el('thead', {}, el('tr', {},
    ['name', 'type', 'unit', 'min', 'max', 'required', 'action'].map((h) => el('th', { scope: 'col' }, h)))), rows)),
  el('p', {}, el('button', { type: 'button', class: 'secondary', id: 'add-field', on: { click: add } }, 'Add a field')),
  el('button', { type: 'submit' }, 'Publish'));
  show(el('h1', {}, 'Publish a dataset'),
    el('p', {}, 'Readings carry sensor_id, ts and an optional lat/lon themselves; the schema lists the values they measure.'),
    form, status);
}

function plansSection(d, plans, reload) {
  const [nameLabel, name] = field('plan-name', 'Name', { required: true });
  const [kindLabel, kind] = field('plan-kind', 'Kind', { options: [['free', 'free'], ['monthly', 'monthly fee'], ['metered', 'per 1000 readings']] });
  const [curLabel, currency] = field('plan-currency', 'Currency', { value: 'EUR', size: 3 });
  const [priceLabel, price] = field('plan-price', 'Price (whole units, e.g. 49.00)', { type: 'number', step: '0.01', min: '0' });
  const [delayLabel, delay] = field('plan-delay', 'Delay (free plans, e.g. 15m)', {});
  const [aggLabel, aggregate] = field('plan-aggregate', 'Aggregates only, over (free plans, e.g. 1h)', {});
  const [histLabel, history] = field('plan-history', 'History it reaches (e.g. 30d; empty: all)', {});
  const paid = el('div', {}, curLabel, currency, priceLabel, price);
  const free = el('div', {}, delayLabel, delay, aggLabel, aggregate);
  const sync = () => { paid.hidden = kind.value === 'free'; free.hidden = kind.value !== 'free'; };
  kind.addEventListener('change', sync);
  sync();
  const form = el('form', { id: 'plan-form', on: { submit: (event) => {
    event.preventDefault();
    attempt('plans-status', async () => {
      const body = { name: name.value, kind: kind.value };
      if (kind.value !== 'free') {
        body.currency = currency.value.trim().toUpperCase();
        body[kind.value === 'monthly' ? 'price_minor' : 'per_1000_minor'] = Math.round(Number(price.value) * 100);
      } else {
        if (delay.value.trim()) body.delay = delay.value.trim();
        if (aggregate.value.trim()) body.aggregate = aggregate.value.trim();
      }
      if (history.value.trim()) body.history = history.value.trim();
      const plan = await api('POST', `/v1/catalog/${encodeURIComponent(d.id)}/plans`, body);
      await reload();
      return `${plan.name} is on offer.`;
    });
  } } }, nameLabel, name, kindLabel, kind, paid, free, histLabel, history, el('button', { type: 'submit' }, 'Offer this plan'));
  const withdraw = (p) => attempt('plans-status', async () => {
    await api('DELETE', `/v1/plans/${encodeURIComponent(p.id)}`);
    await reload();
    return `${p.name} withdrawn; running subscriptions continue.`;
  });
  return [
    el('h2', {}, 'Plans'),
    table('my-plans', [
      ['plan', (p) => p.name],
      ['terms', (p) => planTerms(p)],
      ['state', (p) => (p.active ? 'on offer' : 'withdrawn')],
      ['action', (p) => (p.active ? el('button', { type: 'button', class: 'secondary', on: { click: () => withdraw(p) } }, `Withdraw ${p.name}`) : '')],
    ], plans, 'No plan yet: nobody can subscribe.'),
    el('h3', {}, 'New plan'), form, el('p', { id: 'plans-status', role: 'status' }),
  ];
}

function deviceKeysSection(d, keys, reload) {
  const [labelLabel, label] = field('device-label', 'Label (e.g. the device or site)', {});
  const form = el('form', { id: 'device-key-form', on: { submit: (event) => {
    event.preventDefault();
    attempt('device-keys-status', async () => {
      // An admin makes the key for the dataset's provider.
      const made = await api('POST', '/v1/keys', { kind: 'device', label: label.value, datasets: [d.id], account: d.provider });
      await reload();
      return secret('new-device-key', made.secret);
    });
  } } }, labelLabel, label, el('button', { type: 'submit' }, 'Create a device key'));
  const revoke = (k) => attempt('device-keys-status', async () => {
    await api('DELETE', `/v1/keys/${encodeURIComponent(k.id)}`);
    await reload();
    return `${k.id} revoked: its device is refused from now on.`;
  });
  const devices = keys.filter((k) => k.kind === 'device' && k.datasets.includes(d.id));
  return [
    el('h2', {}, 'Device keys'),
    table('device-keys', [
      ['key', (k) => k.id], ['label', (k) => k.label], ['created', (k) => when(k.created_at)],
      ['state', (k) => (k.revoked_at ? 'revoked' : 'live')],
      ['action', (k) => (k.revoked_at ? '' : el('button', { type: 'button', class: 'secondary', on: { click: () => revoke(k) } }, `Revoke ${k.id}`))],
    ], devices, 'No device key yet.'),
    form, el('div', { id: 'device-keys-status', role: 'status' }),
  ];
}

// The last hour minute by minute, and the rejects with their reasons.
function intakeSection(d, quality, rejects) {
  const intake = el('canvas', { id: 'quality-chart', role: 'img', 'aria-label': 'readings, sensors and rejects per minute' });
  const byReason = el('canvas', { id: 'rejects-chart', role: 'img', 'aria-label': 'rejects per minute by reason' });
  const at = (m) => m.minute / 1000;
  const reasons = [...new Set(quality.minutes.flatMap((m) => m.rejected_by_reason.map((r) => r.reason)))];
  setTimeout(() => {
    lines(intake, [
      { label: 'accepted', points: quality.minutes.map((m) => [at(m), m.accepted]) },
      { label: 'sensors', points: quality.minutes.map((m) => [at(m), m.sensors]) },
      { label: 'rejected', points: quality.minutes.map((m) => [at(m), m.rejected]) },
    ]);
    lines(byReason, reasons.map((reason) => ({
      label: reason,
      points: quality.minutes.map((m) => [at(m), (m.rejected_by_reason.find((r) => r.reason === reason) || { count: 0 }).count]),
    })));
  }, 0);
  const q = quality.last_hour;
  return [
    el('h2', {}, 'Intake, the last hour'),
    el('p', { id: 'quality-summary' }, `${q.readings_last_hour} readings from ${q.active_sensors_last_hour} sensors, `
      + `${q.rejected_last_hour} rejected (${(q.reject_rate * 100).toFixed(1)} %); last reading ${when(q.last_reading_at) || 'none'}.`),
    intake,
    el('h2', {}, 'Rejects'),
    table('reject-counts', [['reason', (c) => c.reason], ['since start', (c) => c.count]], rejects.counts, 'Nothing rejected since start.'),
    reasons.length ? byReason : null,
    el('h3', {}, 'Latest'),
    table('rejects', [
      ['received', (r) => when(r.at)], ['sensor', (r) => r.sensor_id || ''], ['key', (r) => r.key_id],
      ['reason', (r) => r.reason], ['message', (r) => r.message],
    ], rejects.recent, 'None.'),
  ];
}

export async function managePage(id) {
  const load = async () => {
    const path = encodeURIComponent(id);
    const [d, plans, keys, quality, rejects] = await Promise.all([
      api('GET', `/v1/catalog/${path}`),
      api('GET', `/v1/catalog/${path}/plans?all=true`),
      api('GET', '/v1/keys'),
      api('GET', `/v1/datasets/${path}/quality`),
      api('GET', `/v1/datasets/${path}/rejects?limit=50`),
    ]);
    show(
      el('h1', {}, d.title),
      el('p', { class: 'muted' }, `${d.id} · `, el('a', { href: `#/dataset/${path}` }, 'as buyers see it')),
      plansSection(d, plans, load),
      deviceKeysSection(d, keys, load),
      intakeSection(d, quality, rejects));
  };
  await load();
}

function thisMonth() {
  const now = new Date();
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  return d.toISOString().slice(0, 7);
}

export async function statementsPage() {
  const [periodLabel, period] = field('statement-period', 'Month', { type: 'month', value: thisMonth() });
  // An admin reads any provider's statement.
  const admin = state.me.account.role === 'admin';
  const providers = admin ? (await api('GET', '/v1/accounts')).filter((a) => a.role === 'provider') : [];
  const [providerLabel, provider] = field('statement-provider', 'Provider', { options: providers.map((a) => [a.id, a.name]) });
  const out = el('div', { id: 'statement' });
  const load = () => attempt('statement-status', async () => {
    if (admin && !providers.length) return 'No provider account yet.';
    const who = admin ? `&provider=${encodeURIComponent(provider.value)}` : '';
    const s = await api('GET', `/v1/statements?period=${encodeURIComponent(period.value)}${who}`);
    const revenue = el('canvas', { id: 'revenue-chart', role: 'img', 'aria-label': 'revenue by dataset' });
    const buyers = el('canvas', { id: 'buyers-chart', role: 'img', 'aria-label': 'subscriptions by the buyer\u2019s sector' });
    const sectors = new Map();
    for (const c of s.subscribers) sectors.set(c.sector, (sectors.get(c.sector) || 0) + c.subscribers);
    out.replaceChildren(
      el('h2', {}, `Payout for ${s.period}`),
      table('payouts', [
        ['currency', (p) => p.currency], ['revenue', (p) => money(p.revenue_minor, p.currency)],
        [`platform fee (${s.platform_fee_percent} %)`, (p) => money(p.platform_fee_minor, p.currency)],
        ['payout', (p) => money(p.payout_minor, p.currency)],
      ], s.totals, 'No revenue this month.'),
      el('h2', {}, 'Revenue by dataset'),
      s.datasets.length ? revenue : null,
      table('revenue', [
        ['dataset', (r) => r.dataset], ['fees', (r) => money(r.flat_minor, r.currency)],
        ['metered', (r) => money(r.metered_minor, r.currency)], ['queries', (r) => money(r.queried_minor, r.currency)],
        ['revenue', (r) => money(r.revenue_minor, r.currency)], ['readings', (r) => r.readings], ['query rows', (r) => r.query_rows],
      ], s.datasets, 'None.'),
      el('h2', {}, 'Subscriptions by the buyer\u2019s sector'),
      sectors.size ? buyers : null,
      table('buyers', [
        ['dataset', (c) => c.dataset], ['plan', (c) => c.plan_name], ['sector', (c) => c.sector], ['buyers', (c) => c.subscribers],
      ], s.subscribers, 'No buyer this month.'));
    bars(revenue, s.datasets.map((r) => ({ label: r.dataset, values: [r.flat_minor / 100, r.metered_minor / 100, r.queried_minor / 100] })),
      ['fees', 'metered', 'queries']);
    bars(buyers, [...sectors].map(([sector, n]) => ({ label: sector, values: [n] })), ['subscriptions']);
    return null;
  });
  period.addEventListener('change', load);
  provider.addEventListener('change', load);
  show(el('h1', {}, 'Monthly statements'), el('div', { class: 'row' }, admin ? [providerLabel, provider] : null, periodLabel, period),
    el('p', { id: 'statement-status', role: 'status' }), out);
  await load();
}
