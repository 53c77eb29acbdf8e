// A signed-in key's own pages: signing in, its subscriptions, usage over time, invoices and
// keys (created, rotated and revoked here; a new key's secret is shown once).

import { state, el, api, show, failed, attempt, money, when, table, field, secret } from './ui.js';
import { lines } from './chart.js';
import { everyDataset } from './catalog.js';

export function signinPage(whoami) {
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

function subscriptionsSection(subscriptions, reload) {
  const status = el('p', { id: 'subscriptions-status', role: 'status' });
  const cancel = (s) => attempt('subscriptions-status', async () => {
    const after = await api('DELETE', `/v1/subscriptions/${encodeURIComponent(s.id)}`);
    await reload();
    return after.cancel_at_period_end ? `${s.dataset} ends on ${when(after.period_end)}.` : `${s.dataset} cancelled.`;
  });
  return [
    el('h2', {}, 'Subscriptions'),
    table('subscriptions', [
      ['dataset', (s) => el('a', { href: `#/dataset/${encodeURIComponent(s.dataset)}` }, s.dataset)],
      ['plan', (s) => s.plan],
      ['status', (s) => s.status + (s.cancel_at_period_end ? ' (ends at period end)' : '')],
      ['paid until', (s) => when(s.period_end)],
      ['action', (s) => (['active', 'pending_payment', 'past_due'].includes(s.status) && !s.cancel_at_period_end
        ? el('button', { type: 'button', class: 'secondary', on: { click: () => cancel(s) } }, `Cancel ${s.dataset}`) : '')],
    ], subscriptions, 'None yet: pick a dataset in the catalog.'),
    status,
  ];
}

// Usage by the hour over the last week: one line per subscription (or dataset).
function usageSection(usage) {
  const canvas = el('canvas', { id: 'usage-chart', role: 'img', 'aria-label': 'readings delivered per hour' });
  const series = new Map();
  for (const row of usage.rows) {
    const name = row.subscription || row.dataset;
    if (!series.has(name)) series.set(name, { label: name, points: [] });
    series.get(name).points.push([row.hour / 1000, row.readings + row.query_rows]);
  }
  setTimeout(() => lines(canvas, [...series.values()]), 0);
  return [
    el('h2', {}, 'Usage'),
    el('p', { id: 'usage-totals' }, `Last 31 days: ${usage.total_readings} readings delivered live, `
      + `${usage.total_query_rows} rows from history queries.`),
    usage.rows.length ? canvas : null,
  ];
}

function invoicesSection(invoices) {
  return [
    el('h2', {}, 'Invoices'),
    table('invoices', [
      ['invoice', (i) => el('a', { href: `/v1/invoices/${encodeURIComponent(i.id)}?format=csv`, download: `${i.id}.csv` }, i.id)],
      ['period', (i) => i.period],
      ['total', (i) => money(i.total_minor, i.currency)],
      ['due', (i) => money(i.due_minor, i.currency)],
      ['status', (i) => i.status],
    ], invoices, 'No invoice yet.'),
    invoices.length ? el('p', {}, el('a', { id: 'invoices-csv', href: '/v1/invoices?format=csv', download: 'invoices.csv' }, 'Download all as CSV')) : null,
  ];
}

// The account's keys: new ones (a provider's device keys name its datasets), rotation and
// revocation. `datasets` are the ids a device key may be bound to (a provider's own).
export function keysSection(keys, datasets, reload) {
  const role = state.me.account.role;
  const kinds = role === 'provider' ? [['device', 'device (writes readings)'], ['provider', 'provider']] : [[role, role]];
  const [kindLabel, kind] = field('key-kind', 'Kind', { options: kinds });
  const [labelLabel, label] = field('key-label', 'Label', { maxlength: 200 });
  const [dsLabel, ds] = field('key-datasets', 'Datasets it may write', { options: datasets.map((d) => [d, d]), multiple: true });
  const [expLabel, expires] = field('key-expires', 'Expires in (e.g. 90d; empty: never)', {});
  const status = el('div', { id: 'keys-status', role: 'status' });
  const deviceOnly = el('div', {}, dsLabel, ds);
  const sync = () => { deviceOnly.hidden = kind.value !== 'device'; };
  kind.addEventListener('change', sync);
  sync();
  const form = el('form', { id: 'key-form', on: { submit: (event) => {
    event.preventDefault();
    attempt('keys-status', async () => {
      const body = { kind: kind.value, label: label.value };
      if (kind.value === 'device') body.datasets = [...ds.selectedOptions].map((o) => o.value);
      if (expires.value.trim()) body.expires_in = expires.value.trim();
      const made = await api('POST', '/v1/keys', body);
      await reload();
      return secret('new-key', made.secret);
    });
  } } }, kindLabel, kind, labelLabel, label, deviceOnly, expLabel, expires, el('button', { type: 'submit' }, 'Create key'));
  const rotate = (k) => attempt('keys-status', async () => {
    const made = await api('POST', `/v1/keys/${encodeURIComponent(k.id)}/rotate`, {});
    await reload();
    return [secret('new-key', made.secret),
      el('p', {}, `${k.id} keeps working for 24 h, then only the new key does.`)];
  });
  const revoke = (k) => attempt('keys-status', async () => {
    if (!window.confirm(`Revoke ${k.id}? Everything using it stops within a second.`)) return null;
    await api('DELETE', `/v1/keys/${encodeURIComponent(k.id)}`);
    await reload();
    return `${k.id} revoked.`;
  });
  const live = (k) => !k.revoked_at && !(k.expires_at && k.expires_at < Date.now() * 1000);
  return [
    el('h2', {}, 'Keys'),
    table('keys', [
      ['key', (k) => k.id + (k.id === state.me.key.id ? ' (this session)' : '')],
      ['kind', (k) => k.kind],
      ['label', (k) => k.label],
      ['datasets', (k) => k.datasets.join(', ')],
      ['created', (k) => when(k.created_at)],
      ['expires', (k) => when(k.expires_at)],
      ['state', (k) => (k.revoked_at ? 'revoked' : live(k) ? 'live' : 'expired')],
      ['action', (k) => (live(k) ? el('span', {},
        el('button', { type: 'button', class: 'secondary', on: { click: () => rotate(k) } }, `Rotate ${k.id}`), ' ',
        el('button', { type: 'button', class: 'secondary', on: { click: () => revoke(k) } }, `Revoke ${k.id}`)) : '')],
    ], keys),
    el('h3', {}, 'New key'), form, status,
  ];
}

export async function mePage() {
  if (!state.me) { location.hash = '#/signin'; return; }
  const role = state.me.account.role;
  const load = async () => {
    const [subscriptions, usage, invoices, keys, catalog] = await Promise.all([
      api('GET', '/v1/subscriptions'),
      api('GET', '/v1/usage'),
      role === 'subscriber' ? api('GET', '/v1/invoices') : [],
      api('GET', '/v1/keys'),
      role === 'provider' ? everyDataset() : [],
    ]);
    const own = catalog.filter((d) => d.provider === state.me.account.id).map((d) => d.id);
    show(
      el('h1', {}, state.me.account.name),
      el('p', { class: 'muted' }, `${role} · ${state.me.account.sector} · key ${state.me.key.id}`),
      role === 'subscriber' ? subscriptionsSection(subscriptions, load) : null,
      usageSection(usage),
      role === 'subscriber' ? invoicesSection(invoices) : null,
      // An admin's list holds every account's keys: its own are the ones here.
      keysSection(keys.filter((k) => k.account === state.me.account.id), own, load));
  };
  await load();
}
