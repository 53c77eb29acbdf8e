// What every page of the console uses: building elements (provider-supplied text only ever
// as text, never as HTML), calling the API on the session, small formatters.

export const state = { me: null, live: null };

export function el(tag, attrs, ...children) {
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

// One API call on this browser's session; changes carry the session's CSRF token. A refusal
// throws an Error with the API's message and status.
export async function api(method, path, body) {
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
    error.code = data && data.error;
    throw error;
  }
  return data;
}

// Puts a page in <main>: `parts` are nodes, text or (nested) lists of them; null is nothing.
export function show(...parts) {
  const main = document.getElementById('main');
  main.replaceChildren(...parts.flat(Infinity).filter((p) => p !== null && p !== undefined && p !== false));
  main.focus();
}

export function failed(error) {
  return el('p', { class: 'error', role: 'alert' }, error.message || String(error));
}

// Runs `action` for a form or button and shows its outcome (a message, nodes, or the API's
// refusal) in the element `statusId`, looked up afterwards: the action may redraw the page.
export async function attempt(statusId, action) {
  document.getElementById(statusId)?.replaceChildren();
  let outcome;
  try {
    outcome = await action();
  } catch (error) {
    outcome = failed(error);
  }
  if (outcome) document.getElementById(statusId)?.replaceChildren(...[outcome].flat());
}

export function money(minor, currency) {
  return `${(minor / 100).toFixed(2)} ${currency}`;
}

export function ago(micros) {
  if (!micros) return 'no reading yet';
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - micros / 1e6));
  return seconds < 120 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

export function iso(date) { return date.toISOString().replace(/\.\d+Z$/, 'Z'); }

export function when(micros) { return micros ? iso(new Date(micros / 1000)) : ''; }

// A table: `columns` are [heading, row → cell]; a cell may be text or an element.
export function table(id, columns, rows, empty) {
  if (!rows.length && empty) return el('p', { id }, empty);
  return el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': id.replace(/-/g, ' ') }, el('table', { id },
    el('thead', {}, el('tr', {}, columns.map(([heading]) => el('th', { scope: 'col' }, heading)))),
    el('tbody', {}, rows.map((row) => el('tr', {}, columns.map(([, cell]) => el('td', {}, cell(row))))))));
}

// A labelled input: returns [label, input].
export function field(id, label, attrs) {
  return [el('label', { for: id }, label), el(attrs && attrs.options ? 'select' : 'input',
    { id, name: id, ...attrs, options: undefined },
    attrs && attrs.options ? attrs.options.map(([value, text]) => el('option', { value }, text)) : [])];
}

// A secret shown once, with a note that it will not be shown again.
export function secret(id, text) {
  return el('div', { class: 'secret', id },
    el('p', {}, 'Copy this key now: it is not shown again.'),
    el('pre', { tabindex: 0, 'aria-label': 'the new key' }, el('code', {}, text)));
}
