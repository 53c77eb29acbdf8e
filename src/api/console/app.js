// The citygate web console: the catalog for anyone; for a signed-in key, its own pages by
// role (subscriber, provider, admin). Every action is a documented API call; this module
// only routes between pages (`#/...`) and keeps the navigation in step with the session.

import { state, el, api, show, failed } from './ui.js';
import { catalog, dataset } from './catalog.js';
import { signinPage, mePage } from './account.js';
import { providerPage, publishPage, managePage, statementsPage } from './provider.js';
import { adminPage } from './admin.js';

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
  const role = state.me && state.me.account.role;
  document.getElementById('nav-me').hidden = !state.me;
  document.getElementById('nav-provider').hidden = role !== 'provider';
  document.getElementById('nav-admin').hidden = role !== 'admin';
  document.getElementById('nav-signin').hidden = !!state.me;
  document.getElementById('signout').hidden = !state.me;
}

// Each page and who may open it (null: anyone).
const pages = [
  ['#/dataset/', null, (id) => dataset(id)],
  ['#/signin', null, () => signinPage(whoami)],
  ['#/me', ['subscriber', 'provider', 'admin'], () => mePage()],
  ['#/provider', ['provider'], () => providerPage()],
  ['#/publish', ['provider'], () => publishPage()],
  ['#/manage/', ['provider', 'admin'], (id) => managePage(id)],
  ['#/statements', ['provider', 'admin'], () => statementsPage()],
  ['#/admin', ['admin'], () => adminPage()],
];

async function route() {
  if (state.live && !location.hash.startsWith('#/dataset/')) { state.live.close(); state.live = null; }
  const hash = location.hash || '#/';
  const page = pages.find(([prefix]) => (prefix.endsWith('/') ? hash.startsWith(prefix) : hash === prefix));
  try {
    if (page && page[1] && !state.me) location.hash = '#/signin';
    else if (page && page[1] && !page[1].includes(state.me.account.role)) {
      show(el('h1', {}, 'Not for this key'), el('p', {}, `A ${state.me.account.role} key does not open this page.`));
    } else if (page) await page[2](decodeURIComponent(hash.slice(page[0].length)));
    else await catalog();
  } catch (error) {
    show(el('h1', {}, 'Something went wrong'), failed(error));
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
