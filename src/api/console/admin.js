// An admin's pages: accounts (a new one's first key shown once), recording a manual payment,
// generating a month's invoices, and an operator's view of the server from its own metrics.

import { el, api, show, attempt, money, when, table, field, secret } from './ui.js';
import { lines } from './chart.js';

function accountsSection(accounts, reload) {
  const [idLabel, id] = field('account-id', 'Id (empty: one is made)', {});
  const [roleLabel, role] = field('account-role', 'Role', { options: [['subscriber', 'subscriber'], ['provider', 'provider'], ['admin', 'admin']] });
  const [nameLabel, name] = field('account-name', 'Name', { required: true });
  const [sectorLabel, sector] = field('account-sector', 'Sector (e.g. mobility, energy, research)', { required: true });
  const [emailLabel, email] = field('account-email', 'Email', { type: 'email' });
  const form = el('form', { id: 'account-form', on: { submit: (event) => {
    event.preventDefault();
    attempt('accounts-status', async () => {
      const body = { role: role.value, name: name.value, sector: sector.value.trim() };
      if (id.value.trim()) body.id = id.value.trim();
      if (email.value.trim()) body.email = email.value.trim();
      const made = await api('POST', '/v1/accounts', body);
      await reload();
      return [el('p', {}, `${made.account.name} (${made.account.id}) created; its first key:`), secret('new-account-key', made.key.secret)];
    });
  } } }, idLabel, id, roleLabel, role, nameLabel, name, sectorLabel, sector, emailLabel, email,
  el('button', { type: 'submit' }, 'Create account'));
  return [
    el('h2', {}, 'Accounts'),
    table('accounts', [
      ['account', (a) => a.id], ['name', (a) => a.name], ['role', (a) => a.role], ['sector', (a) => a.sector],
      ['email', (a) => a.email || ''], ['since', (a) => when(a.created_at)],
    ], accounts),
    el('h3', {}, 'New account'), form, el('div', { id: 'accounts-status', role: 'status' }),
  ];
}

function paymentsSection(subscriptions, reload) {
  const record = (s) => attempt('payments-status', async () => {
    const reference = window.prompt(`Payment reference for ${s.id} (bank transfer id; empty: one is made)`, '');
    if (reference === null) return null;
    const after = await api('POST', `/v1/subscriptions/${encodeURIComponent(s.id)}/payments`,
      reference.trim() ? { reference: reference.trim() } : {});
    await reload();
    return `${s.id} paid until ${when(after.period_end)}.`;
  });
  // Paid plans settled by hand: waiting, overdue, or running (a free plan has no period end).
  const manual = subscriptions.filter((s) => s.payment_provider === 'manual'
    && (['pending_payment', 'past_due'].includes(s.status) || (s.status === 'active' && s.period_end)));
  return [
    el('h2', {}, 'Manual payments'),
    table('payments', [
      ['subscription', (s) => s.id], ['account', (s) => s.account], ['dataset', (s) => s.dataset], ['plan', (s) => s.plan],
      ['status', (s) => s.status], ['paid until', (s) => when(s.period_end)],
      ['action', (s) => el('button', { type: 'button', class: 'secondary', on: { click: () => record(s) } }, `Record a payment for ${s.id}`)],
    ], manual, 'No subscription waits for a manual payment.'),
    el('p', { id: 'payments-status', role: 'status' }),
  ];
}

function invoicesSection() {
  const now = new Date();
  const previous = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1)).toISOString().slice(0, 7);
  const [periodLabel, period] = field('invoice-period', 'Month', { type: 'month', value: previous });
  const list = el('div', { id: 'invoice-list' });
  const render = (invoices) => list.replaceChildren(table('admin-invoices', [
    ['invoice', (i) => i.id], ['account', (i) => i.account], ['total', (i) => money(i.total_minor, i.currency)],
    ['due', (i) => money(i.due_minor, i.currency)], ['status', (i) => i.status],
  ], invoices, 'No invoice for this month.'),
  el('a', { href: `/v1/invoices?period=${encodeURIComponent(period.value)}&format=csv`, download: `invoices-${period.value}.csv` }, 'Download as CSV'));
  const form = el('form', { id: 'invoice-form', on: { submit: (event) => {
    event.preventDefault();
    attempt('invoices-status', async () => {
      const invoices = await api('POST', '/v1/invoices/generate', { period: period.value });
      render(invoices);
      return `${invoices.length} invoice(s) for ${period.value}.`;
    });
  } } }, periodLabel, period, el('button', { type: 'submit' }, 'Generate invoices'));
  const show = () => attempt('invoices-status', async () => {
    render(await api('GET', `/v1/invoices?period=${encodeURIComponent(period.value)}`));
    return null;
  });
  period.addEventListener('change', show);
  setTimeout(show, 0);
  return [el('h2', {}, 'Invoices'), form, el('p', { id: 'invoices-status', role: 'status' }), list];
}

// Prometheus text: { name: [{ labels, value }] }.
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const m = /^([a-z_:][a-z0-9_:]*)(\{([^}]*)\})? ([^ ]+)/i.exec(line);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[3] || '').matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/gi)) labels[pair[1]] = pair[2];
    (out[m[1]] ||= []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

const sum = (metrics, name) => (metrics[name] || []).reduce((a, s) => a + s.value, 0);

// The operator's view: intake rate, log lag per sink, feed sessions and connections, read
// from /metrics every few seconds while the page is open.
function operatorSection() {
  const figures = el('div', { id: 'operator' }, el('p', {}, 'Reading /metrics…'));
  const chart = el('canvas', { id: 'intake-chart', role: 'img', 'aria-label': 'intake rate while this page is open' });
  const rates = [];
  let last = null;
  const tick = async () => {
    if (!document.body.contains(figures)) return;
    try {
      const response = await fetch('/metrics', { credentials: 'same-origin' });
      const metrics = parseMetrics(await response.text());
      const now = Date.now();
      const accepted = sum(metrics, 'citygate_readings_accepted_total');
      const rate = last ? (accepted - last.accepted) / ((now - last.at) / 1000) : null;
      last = { at: now, accepted };
      if (rate !== null) rates.push([now, rate]);
      if (rates.length > 720) rates.shift();
      const lag = (metrics.citygate_sink_lag_seconds || []).map((s) => ({
        sink: s.labels.sink, seconds: s.value,
        records: ((metrics.citygate_sink_lag_records || []).find((r) => r.labels.sink === s.labels.sink) || { value: 0 }).value,
      }));
      figures.replaceChildren(
        el('ul', { class: 'figures', id: 'operator-figures' },
          el('li', {}, rate === null ? 'intake: measuring' : `intake ${rate.toFixed(1)} readings/s`),
          el('li', {}, `${accepted} readings accepted since start`),
          el('li', {}, `${sum(metrics, 'citygate_http_connections_open')} HTTP connections`),
          el('li', {}, `${sum(metrics, 'citygate_mqtt_connections_open')} MQTT connections`),
          el('li', {}, `log ${(sum(metrics, 'citygate_wal_bytes') / 1e6).toFixed(1)} MB`)),
        chart,
        el('h3', {}, 'Log lag per sink'),
        table('sink-lag', [['sink', (s) => s.sink], ['records behind', (s) => s.records], ['seconds behind', (s) => s.seconds.toFixed(1)]], lag, 'No sink.'),
        el('h3', {}, 'Live feed sessions'),
        table('feed-sessions', [['protocol', (s) => s.labels.protocol], ['open', (s) => s.value]], metrics.citygate_feed_sessions || [], 'None.'));
      lines(chart, [{ label: 'readings/s', points: rates }]);
    } catch (error) {
      figures.replaceChildren(el('p', { class: 'error' }, error.message));
    }
    // A first rate after a second, then every five.
    setTimeout(tick, rates.length ? 5000 : 1000);
  };
  setTimeout(tick, 0);
  return [el('h2', {}, 'Operator view'), figures];
}

export async function adminPage() {
  const load = async () => {
    const [accounts, subscriptions] = await Promise.all([api('GET', '/v1/accounts'), api('GET', '/v1/subscriptions')]);
    show(el('h1', {}, 'Administration'),
      el('p', {}, el('a', { href: '#/statements' }, 'Providers\u2019 statements')),
      operatorSection(), accountsSection(accounts, load), paymentsSection(subscriptions, load), invoicesSection());
  };
  await load();
}
