// The broker's /v1 JSON API, called with the session cookie that /console/session hands
// out. Every state-changing request carries the session's CSRF token in X-CSRF-Token;
// a problem+json answer becomes an ApiError with the broker's detail as its message.

import { state } from './state.js';

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `The broker answered ${status}.`);
    this.status = status;
    this.problem = problem || {};
  }
}

export async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { detail: 'The broker cannot be reached; check the connection and try again.' });
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// What to do when a signed-in call answers 401; session.js sets it (no import cycle).
let sessionEnded = () => {};

/** Call ``fn(message)`` when a signed-in page learns that its session is over. */
export function whenSessionEnds(fn) {
  sessionEnded = fn;
}

/** An API call in a signed-in page: a 401 means the session is over. */
export async function api(method, path, body) {
  try {
    return await call(method, path, body);
  } catch (err) {
    if (err.status === 401 && state.me) sessionEnded(err.message);
    throw err;
  }
}

/** The signed-in estate's API path, and one pool's. */
export const E = (rest = '') => `/v1/estates/${encodeURIComponent(state.me.estate_id)}${rest}`;
export const P = (id, rest = '') => E(`/pools/${encodeURIComponent(id)}${rest}`);

/** Every item of a cursor-paged list (``{items, next}``), fetched page after page. */
export async function listAll(path) {
  const items = [];
  const sep = path.includes('?') ? '&' : '?';
  let after = '';
  for (;;) {
    const page = await api('GET', `${path}${sep}limit=500${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    items.push(...page.items);
    if (!page.next) return { items, next: null };
    after = page.next;
  }
}
