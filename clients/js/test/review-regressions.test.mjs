// Regression tests for the faults a hostile review of the client found (each test is named
// after the fault it pins). Same fake window as client.test.mjs, kept minimal.

import assert from 'node:assert/strict';
import { test } from 'node:test';

const ORIGIN = 'https://app.example';
let n = 0;

async function load({ baseURI } = {}) {
  const win = new EventTarget();
  const assigned = [];
  const location = {
    origin: ORIGIN, pathname: '/orders/7', search: '', hash: '',
    get href() { return ORIGIN + this.pathname + this.search + this.hash; },
    assign(u) { assigned.push(u); },
  };
  const document = new EventTarget();
  document.visibilityState = 'visible';
  document.baseURI = baseURI ?? location.href;
  const children = [];
  document.body = { children, append(el) { children.push(el); } };
  document.createElement = (tag) => {
    const el = { tag, attrs: {}, contentWindow: { frame: true }, setAttribute(k, v) { this.attrs[k] = v; },
      remove() { const i = children.indexOf(el); if (i >= 0) children.splice(i, 1); } };
    return el;
  };
  Object.assign(globalThis, {
    location, document,
    addEventListener: win.addEventListener.bind(win),
    removeEventListener: win.removeEventListener.bind(win),
  });
  const mod = await import(`../src/index.js?review=${n++}`);
  return { location, document, assigned, mod };
}

const user = (expiresIn = 600) => [
  { type: 'sub', value: 'alice' }, { type: 'sid', value: 'S1' },
  { type: 'bff:logout_url', value: '/bff/logout?sid=S1' }, { type: 'bff:session_expires_in', value: expiresIn },
];
const tick = async () => { for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r)); };

test('a_401_during_a_silent_login_does_not_navigate_the_page', async () => {
  const env = await load();
  const fetch = async (input) => (String(input).includes('/bff/user') ? new Response('', { status: 401 }) : new Response('', { status: 401 }));
  const c = env.mod.createBffClient({ fetch, pollInterval: 0 });
  const silent = c.silentLogin({ timeout: 50 });
  await c.fetch('/api/orders');
  await tick();
  assert.deepEqual(env.assigned, [], 'no login navigation while the iframe is at work');
  assert.equal(await silent, false);
  c.close();
});

test('a_session_longer_than_24_days_does_not_warn_at_once', async () => {
  const env = await load();
  const fired = [];
  const fetch = async () => Response.json(user(30 * 24 * 3600));
  const c = env.mod.createBffClient({ fetch, pollInterval: 0, onSessionExpiring: (d) => fired.push(d) });
  await c.user();
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(fired, []);
  c.close();
});

test('a_refresh_during_a_quiet_poll_still_sends_a_sliding_request', async () => {
  const env = await load();
  const urls = [];
  let release;
  const fetch = async (input) => {
    urls.push(String(input));
    if (String(input).includes('slide=false')) await new Promise((r) => { release = r; });
    return Response.json(user());
  };
  const c = env.mod.createBffClient({ fetch, pollInterval: 60_000 });
  await c.user();
  env.document.dispatchEvent(new Event('visibilitychange')); // a quiet poll starts
  await tick();
  const refreshed = c.user({ refresh: true });
  await tick();
  release();
  await refreshed;
  assert.deepEqual(urls, [`${ORIGIN}/bff/user`, `${ORIGIN}/bff/user?slide=false`, `${ORIGIN}/bff/user`]);
  c.close();
});

test('a_relative_url_under_a_foreign_base_href_gets_no_anti_forgery_header', async () => {
  const env = await load({ baseURI: 'https://cdn.other.example/app/' });
  const seen = [];
  const fetch = async (input, init) => { seen.push({ input: String(input), headers: new Headers(init?.headers) }); return new Response('{}'); };
  const c = env.mod.createBffClient({ fetch, pollInterval: 0 });
  await c.fetch('api/x');
  assert.equal(seen.length, 1);
  assert.equal(seen[0].headers.get('X-CSRF'), null);
  await c.fetch('/api/y', null); // `null` init is accepted, as by fetch
  assert.equal(seen[1].headers.get('X-CSRF'), null, '/api/y resolves against the CDN base too');
  c.close();
});

test('poll_interval_zero_never_polls_on_visibility_changes', async () => {
  const env = await load();
  const urls = [];
  const fetch = async (input) => { urls.push(String(input)); return Response.json(user()); };
  const c = env.mod.createBffClient({ fetch, pollInterval: 0 });
  await c.user();
  for (let i = 0; i < 3; i++) {
    env.document.visibilityState = 'hidden';
    env.document.dispatchEvent(new Event('visibilitychange'));
    env.document.visibilityState = 'visible';
    env.document.dispatchEvent(new Event('visibilitychange'));
  }
  await tick();
  assert.deepEqual(urls, [`${ORIGIN}/bff/user`]);
  c.close();
});

test('no_session_expiring_event_after_close', async () => {
  const env = await load();
  const fired = [];
  const fetch = async () => Response.json(user(1));
  const c = env.mod.createBffClient({ fetch, pollInterval: 0, sessionExpiringBefore: 60_000, onSessionExpiring: (d) => fired.push(d) });
  c.close();
  await c.user();
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(fired, []);
});

test('session_active_is_unknown_when_the_bff_cannot_answer', async () => {
  const env = await load();
  const details = [];
  const fetch = async (input) => new Response('', { status: String(input).includes('/bff/user') ? 503 : 401 });
  const c = env.mod.createBffClient({ fetch, pollInterval: 0, onUnauthorized: (d) => details.push(d) });
  await c.fetch('/api/orders');
  await tick();
  assert.equal(details.length, 1);
  assert.equal(details[0].sessionActive, undefined);
  assert.deepEqual(env.assigned, []);
  c.close();
});
