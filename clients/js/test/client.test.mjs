// Unit tests of @portcullis/bff-client without a browser: a fake `location`, `document` and
// window event target, a fake BFF behind the injected `fetch`, node's mock timers. The real
// browser runs are in testing/browser/client-e2e.mjs (driven by the cargo test
// crates/portcullis-cli/tests/browser_client.rs).

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, mock, test } from 'node:test';

const ORIGIN = 'https://app.example';
const ALICE = [
  { type: 'sub', value: 'alice' },
  { type: 'name', value: 'Alice Smith' },
  { type: 'sid', value: 'S1/+=' },
  { type: 'amr', value: 'pwd' },
  { type: 'amr', value: 'mfa' },
  { type: 'bff:logout_url', value: '/bff/logout?sid=S1%2F%2B%3D' },
  { type: 'bff:session_expires_in', value: 600 },
];

let env;
let imports = 0;

/** A fresh copy of the module (its once-per-page-load flag starts over) in a fake window. */
async function load({ path = '/orders/7', search = '?tab=2', hash = '' } = {}) {
  const win = new EventTarget();
  const assigned = [];
  const location = {
    origin: ORIGIN,
    pathname: path,
    search,
    hash,
    get href() { return ORIGIN + this.pathname + this.search + this.hash; },
    assign(u) { assigned.push(u); },
  };
  const document = new EventTarget();
  document.visibilityState = 'visible';
  const children = [];
  document.body = {
    children,
    append(el) {
      children.push(el);
      el.onAppend?.(el);
    },
  };
  document.createElement = (tag) => {
    const el = {
      tag,
      attrs: {},
      contentWindow: { frame: true },
      setAttribute(k, v) { this.attrs[k] = v; },
      remove() {
        const i = children.indexOf(el);
        if (i >= 0) children.splice(i, 1);
      },
    };
    document.created = el;
    return el;
  };
  Object.assign(globalThis, {
    location,
    document,
    addEventListener: win.addEventListener.bind(win),
    removeEventListener: win.removeEventListener.bind(win),
  });
  env = { win, location, document, assigned };
  const mod = await import(`../src/index.js?copy=${imports++}`);
  return { ...env, mod };
}

/** A fake BFF: `/bff/user` answers from `state.user` (null → 401), other paths `state.status`. */
function fakeBff(state) {
  const calls = [];
  const fetch = async (input, init = {}) => {
    const url = new URL(input instanceof Request ? input.url : String(input), ORIGIN);
    calls.push({ url, headers: new Headers(init.headers), credentials: init.credentials, input });
    if (state.fail) throw new TypeError('network down');
    if (url.pathname === '/bff/user') {
      if (state.userStatus) return new Response('', { status: state.userStatus });
      return state.user ? Response.json(state.user) : new Response('', { status: 401 });
    }
    return new Response('{}', { status: state.status ?? 200 });
  };
  return { fetch, calls, userCalls: () => calls.filter((c) => c.url.pathname === '/bff/user') };
}

const flush = () => new Promise((r) => setImmediate(r));
async function settle() {
  for (let i = 0; i < 5; i++) await flush();
}

beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 }));
afterEach(() => {
  mock.timers.reset();
  for (const k of ['location', 'document', 'addEventListener', 'removeEventListener']) delete globalThis[k];
});

describe('parseUser', () => {
  test('claims become an object, repeated claims arrays, bff: claims top-level fields', async () => {
    const { mod } = await load();
    const u = mod.parseUser(ALICE, 5000);
    assert.deepEqual(u.claims, { sub: 'alice', name: 'Alice Smith', sid: 'S1/+=', amr: ['pwd', 'mfa'] });
    assert.equal(u.sub, 'alice');
    assert.equal(u.sid, 'S1/+=');
    assert.equal(u.logoutUrl, '/bff/logout?sid=S1%2F%2B%3D');
    assert.equal(u.expiresIn, 600);
    assert.equal(u.expiresAt, 5000 + 600_000);
    assert.equal(u.sessionState, undefined);
    const three = mod.parseUser([{ type: 'r', value: 1 }, { type: 'r', value: 2 }, { type: 'r', value: 3 }]);
    assert.deepEqual(three.claims.r, [1, 2, 3]);
  });

  test('anonymous answers are null', async () => {
    const { mod } = await load();
    for (const body of [null, [], {}, 'x', undefined]) assert.equal(mod.parseUser(body), null);
  });

  test('a claim named __proto__ stays a plain claim', async () => {
    const { mod } = await load();
    const u = mod.parseUser([{ type: '__proto__', value: { polluted: true } }, { type: 'sub', value: 'x' }]);
    assert.equal(Object.getPrototypeOf(u.claims), Object.prototype);
    assert.equal(u.claims.polluted, undefined);
    assert.deepEqual(Object.keys(u.claims), ['__proto__', 'sub']);
  });
});

describe('nextPollDelay', () => {
  test('interval when visible, the hidden interval when hidden, doubling on failures', async () => {
    const { mod } = await load();
    const base = { interval: 5000, hiddenInterval: 60_000, hidden: false, failures: 0, now: 0 };
    assert.equal(mod.nextPollDelay(base), 5000);
    assert.equal(mod.nextPollDelay({ ...base, hidden: true }), 60_000);
    assert.equal(mod.nextPollDelay({ ...base, failures: 2 }), 20_000);
    assert.equal(mod.nextPollDelay({ ...base, failures: 40 }), 300_000);
    // just after the session's end, not a whole interval later
    assert.equal(mod.nextPollDelay({ ...base, expiresAt: 2000 }), 2500);
  });
});

describe('fetch', () => {
  test('adds the anti-forgery header and credentials to same-origin requests only', async () => {
    const { mod } = await load();
    const bff = fakeBff({});
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 0 });
    await c.fetch('/api/a', { headers: { Accept: 'application/json' } });
    await c.fetch(`${ORIGIN}/api/b`);
    await c.fetch(new Request(`${ORIGIN}/api/c`, { headers: { 'X-Mine': '1' } }));
    await c.fetch(new URL('/api/d', ORIGIN));
    for (const call of bff.calls) {
      assert.equal(call.headers.get('X-CSRF'), '1', call.url.href);
      assert.equal(call.credentials, 'same-origin');
    }
    assert.equal(bff.calls[0].headers.get('Accept'), 'application/json');
    assert.equal(bff.calls[2].headers.get('X-Mine'), '1');

    const other = { headers: { Accept: 'text/plain' } };
    for (const url of ['https://api.other.example/x', 'http://app.example/x', 'https://app.example:8443/x', '//evil.example/x']) {
      await c.fetch(url, other);
      const last = bff.calls.at(-1);
      assert.equal(last.headers.get('X-CSRF'), null, url);
      assert.equal(last.credentials, undefined, url);
    }
    assert.equal(bff.calls.at(-1).url.host, 'evil.example');
  });

  test('custom header name and value; split origin uses credentials include', async () => {
    const { mod } = await load();
    const bff = fakeBff({});
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 0, origin: 'https://bff.example', antiForgery: { header: 'X-Anti', value: 'yes' } });
    await c.fetch('https://bff.example/api/x');
    await c.fetch('/api/x'); // the page's origin is not the BFF's
    assert.equal(bff.calls[0].headers.get('X-Anti'), 'yes');
    assert.equal(bff.calls[0].headers.get('X-CSRF'), null);
    assert.equal(bff.calls[0].credentials, 'include');
    assert.equal(bff.calls[1].headers.get('X-Anti'), null);
  });
});

describe('401 handling', () => {
  test('two 401s without a session: exactly one login navigation, back to the same route', async () => {
    const { mod, assigned } = await load({ path: '/orders/7', search: '?tab=2', hash: '#items' });
    const bff = fakeBff({ user: null, status: 401 });
    const c = mod.createBffClient({ fetch: bff.fetch });
    const [a, b] = await Promise.all([c.fetch('/api/a'), c.fetch('/api/b')]);
    assert.equal(a.status, 401, 'the caller still gets the response');
    assert.equal(b.status, 401);
    await settle();
    await c.fetch('/api/c');
    await settle();
    assert.equal(assigned.length, 1, assigned.join());
    const u = new URL(assigned[0]);
    assert.equal(u.origin + u.pathname, `${ORIGIN}/bff/login`);
    assert.equal(u.searchParams.get('returnUrl'), '/orders/7?tab=2#items');
    // the session check behind the decision never extends the session
    assert.ok(bff.userCalls().every((call) => call.url.searchParams.get('slide') === 'false'));
  });

  test('a second client on the same page does not navigate again', async () => {
    const { mod, assigned } = await load();
    const bff = fakeBff({ user: null, status: 401 });
    await mod.createBffClient({ fetch: bff.fetch }).fetch('/api/a');
    await settle();
    await mod.createBffClient({ fetch: bff.fetch }).fetch('/api/a');
    await settle();
    assert.equal(assigned.length, 1);
  });

  test('no navigation when the session is still alive (only the API refused)', async () => {
    const { mod, assigned } = await load();
    const bff = fakeBff({ user: ALICE, status: 401 });
    const c = mod.createBffClient({ fetch: bff.fetch });
    await c.fetch('/api/a');
    await settle();
    assert.deepEqual(assigned, []);
  });

  test('no navigation when the BFF cannot say (503): a login would not help', async () => {
    const { mod, assigned } = await load();
    const bff = fakeBff({ userStatus: 503, status: 401 });
    await mod.createBffClient({ fetch: bff.fetch }).fetch('/api/a');
    await settle();
    assert.deepEqual(assigned, []);
  });

  for (const path of ['/bff/login', '/signin-oidc', '/signout-callback-oidc', '/bff/silent-login-callback', '/auth/cb']) {
    test(`no automatic login navigation on the flow page ${path}`, async () => {
      const { mod, assigned } = await load({ path, search: '' });
      const bff = fakeBff({ user: null, status: 401 });
      const c = mod.createBffClient({ fetch: bff.fetch, callbackPaths: ['/signin-oidc', '/signout-callback-oidc', '/auth/cb'] });
      await c.fetch('/api/a');
      await settle();
      assert.deepEqual(assigned, []);
    });
  }

  test('no automatic navigation while an explicit login is in flight', async () => {
    const { mod, assigned } = await load();
    const bff = fakeBff({ user: null, status: 401 });
    const c = mod.createBffClient({ fetch: bff.fetch });
    c.login({ returnUrl: '/start' });
    await c.fetch('/api/a');
    await settle();
    assert.equal(assigned.length, 1);
    assert.equal(new URL(assigned[0]).searchParams.get('returnUrl'), '/start');
  });

  test('a 401 from /bff/user itself is "anonymous", not a reason to log in', async () => {
    const { mod, assigned } = await load();
    const bff = fakeBff({ user: null });
    const c = mod.createBffClient({ fetch: bff.fetch });
    const r = await c.fetch('/bff/user');
    assert.equal(r.status, 401);
    await settle();
    assert.deepEqual(assigned, []);
  });

  test('onUnauthorized replaces the navigation and learns whether the session is alive', async () => {
    const { mod, assigned } = await load();
    const bff = fakeBff({ user: null, status: 401 });
    const seen = [];
    const c = mod.createBffClient({ fetch: bff.fetch, onUnauthorized: (d) => seen.push(d) });
    await c.fetch('/api/a');
    await settle();
    assert.deepEqual(assigned, []);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].url, `${ORIGIN}/api/a`);
    assert.equal(seen[0].sessionActive, false);
    assert.equal(seen[0].response.status, 401);
  });
});

describe('user, login, logout', () => {
  test('user() is cached, refresh asks again, anonymous is null, userChanged fires on changes', async () => {
    const { mod } = await load();
    const state = { user: ALICE };
    const bff = fakeBff(state);
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 0 });
    const changes = [];
    c.addEventListener('userChanged', (e) => changes.push(e.detail.user?.sub ?? null));
    const [u1, u2] = await Promise.all([c.user(), c.user()]);
    assert.equal(u1, u2);
    assert.equal((await c.user()).claims.name, 'Alice Smith');
    assert.equal(bff.userCalls().length, 1, 'cached');
    assert.equal(bff.userCalls()[0].headers.get('X-CSRF'), '1');
    await c.user({ refresh: true });
    assert.equal(bff.userCalls().length, 2);
    state.user = null;
    assert.equal(await c.user({ refresh: true }), null);
    assert.equal(c.currentUser, null);
    assert.deepEqual(changes, ['alice', null], 'no event for an unchanged user');
  });

  test('200 null is anonymous; 503 rejects without forgetting the user', async () => {
    const { mod } = await load();
    const state = { user: ALICE };
    const bff = fakeBff(state);
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 0 });
    await c.user();
    state.userStatus = 503;
    await assert.rejects(c.user({ refresh: true }), /503/);
    assert.equal(c.currentUser.sub, 'alice');
    delete state.userStatus;
    const nullBff = async () => Response.json(null);
    assert.equal(await mod.createBffClient({ fetch: nullBff, pollInterval: 0 }).user(), null);
  });

  test('loginUrl: current route by default, prompt passed through, basePath "/" and trailing slashes', async () => {
    const { mod } = await load({ path: '/a b', search: '?x=1' });
    const c = mod.createBffClient({ pollInterval: 0, fetch: fakeBff({}).fetch });
    const u = new URL(c.loginUrl({ prompt: 'login' }));
    assert.equal(u.pathname, '/bff/login');
    assert.equal(u.searchParams.get('returnUrl'), '/a b?x=1');
    assert.equal(u.searchParams.get('prompt'), 'login');
    assert.equal(new URL(mod.createBffClient({ basePath: '/', fetch: fakeBff({}).fetch }).loginUrl()).pathname, '/login');
    assert.equal(new URL(mod.createBffClient({ basePath: '/auth/', fetch: fakeBff({}).fetch }).loginUrl()).pathname, '/auth/login');
  });

  test('logout navigates to the fresh bff:logout_url (never a guessed sid) with returnUrl', async () => {
    const { mod, assigned } = await load();
    const state = { user: ALICE };
    const bff = fakeBff(state);
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 0 });
    await c.user();
    // the session was replaced meanwhile (e.g. a silent login): the new sid counts
    state.user = ALICE.map((x) => (x.type === 'bff:logout_url' ? { ...x, value: '/bff/logout?sid=S2' } : x));
    await c.logout({ returnUrl: '/bye' });
    const u = new URL(assigned[0]);
    assert.equal(u.pathname, '/bff/logout');
    assert.equal(u.searchParams.get('sid'), 'S2');
    assert.equal(u.searchParams.get('returnUrl'), '/bye');
    // anonymous: the plain endpoint (the BFF redirects without a session)
    state.user = null;
    await c.logout();
    assert.equal(assigned[1], `${ORIGIN}/bff/logout`);
  });
});

describe('polling and events', () => {
  test('polls /bff/user?slide=false while logged in and fires sessionEnded once when it turns anonymous', async () => {
    const { mod } = await load();
    const state = { user: ALICE };
    const bff = fakeBff(state);
    const ended = [];
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 1000, onSessionEnded: (d) => ended.push(d.previous.sub) });
    await c.user();
    assert.equal(bff.userCalls().length, 1);
    assert.equal(bff.userCalls()[0].url.searchParams.get('slide'), null, 'the first load is user activity');
    mock.timers.tick(1000);
    await settle();
    mock.timers.tick(1000);
    await settle();
    assert.equal(bff.userCalls().length, 3);
    assert.ok(bff.userCalls().slice(1).every((call) => call.url.search === '?slide=false'));
    state.user = null;
    mock.timers.tick(1000);
    await settle();
    assert.deepEqual(ended, ['alice']);
    mock.timers.tick(10_000);
    await settle();
    assert.equal(bff.userCalls().length, 4, 'no polling while anonymous');
    c.close();
  });

  test('hidden tab: polls at the hidden interval; visible again: polls at once', async () => {
    const { mod, document } = await load();
    const bff = fakeBff({ user: ALICE });
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 1000, hiddenPollInterval: 30_000 });
    await c.user();
    document.visibilityState = 'hidden';
    document.dispatchEvent(new Event('visibilitychange'));
    mock.timers.tick(29_000);
    await settle();
    assert.equal(bff.userCalls().length, 1);
    mock.timers.tick(1000);
    await settle();
    assert.equal(bff.userCalls().length, 2);
    document.visibilityState = 'visible';
    document.dispatchEvent(new Event('visibilitychange'));
    await settle();
    assert.equal(bff.userCalls().length, 3);
    c.close();
    mock.timers.tick(100_000);
    await settle();
    assert.equal(bff.userCalls().length, 3, 'close() stops polling');
  });

  test('a failing poll backs off and keeps the user (a BFF that cannot answer is not a logout)', async () => {
    const { mod } = await load();
    const state = { user: ALICE };
    const bff = fakeBff(state);
    const ended = [];
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 1000, onSessionEnded: () => ended.push(1) });
    await c.user();
    state.fail = true;
    mock.timers.tick(1000); // fails, next in 2 s
    await settle();
    mock.timers.tick(1999);
    await settle();
    assert.equal(bff.calls.length, 2);
    mock.timers.tick(1); // fails, next in 4 s
    await settle();
    assert.equal(bff.calls.length, 3);
    state.fail = false;
    mock.timers.tick(4000);
    await settle();
    assert.equal(bff.calls.length, 4);
    mock.timers.tick(1000); // back to the normal interval
    await settle();
    assert.equal(bff.calls.length, 5);
    assert.deepEqual(ended, []);
    assert.equal(c.currentUser.sub, 'alice');
    c.close();
  });

  test('sessionExpiring fires sessionExpiringBefore ahead of the idle end, once per expiry', async () => {
    const { mod } = await load();
    const state = { user: ALICE.map((x) => (x.type === 'bff:session_expires_in' ? { ...x, value: 10 } : x)) };
    const bff = fakeBff(state);
    const warnings = [];
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 0, sessionExpiringBefore: 4000, onSessionExpiring: (d) => warnings.push(d.expiresIn) });
    await c.user();
    mock.timers.tick(5999);
    assert.deepEqual(warnings, []);
    mock.timers.tick(1);
    assert.deepEqual(warnings, [4]);
    // a poll that sees the same end (whole seconds) does not warn again
    state.user = state.user.map((x) => (x.type === 'bff:session_expires_in' ? { ...x, value: 4 } : x));
    await c.user({ refresh: true });
    mock.timers.tick(3000);
    assert.deepEqual(warnings, [4]);
    // the session was extended: a new warning for the new end
    state.user = state.user.map((x) => (x.type === 'bff:session_expires_in' ? { ...x, value: 10 } : x));
    await c.user({ refresh: true });
    mock.timers.tick(6000);
    assert.deepEqual(warnings, [4, 4]);
    c.close();
  });
});

describe('silentLogin', () => {
  function answerWith(message, { origin = ORIGIN, fromFrame = true } = {}) {
    env.document.createElement = ((orig) => (tag) => {
      const el = orig(tag);
      el.onAppend = () => setImmediate(() => {
        const e = new Event('message');
        Object.assign(e, { origin, source: fromFrame ? el.contentWindow : {}, data: message });
        env.win.dispatchEvent(e);
      });
      return el;
    })(env.document.createElement);
  }

  test('true from the callback page, iframe removed, user re-read', async () => {
    const { mod, document } = await load();
    const state = { user: null };
    const bff = fakeBff(state);
    const c = mod.createBffClient({ fetch: bff.fetch, pollInterval: 0 });
    assert.equal(await c.user(), null);
    answerWith({ source: 'bff-silent-login', isLoggedIn: true });
    state.user = ALICE;
    assert.equal(await c.silentLogin({ timeout: 5000 }), true);
    const frame = document.created;
    const src = new URL(frame.src);
    assert.equal(src.pathname, '/bff/login');
    assert.equal(src.searchParams.get('prompt'), 'none');
    assert.equal(frame.hidden, true);
    assert.equal(document.body.children.length, 0, 'no iframe left behind');
    assert.equal(c.currentUser.sub, 'alice');
  });

  test('false from the callback page', async () => {
    const { mod, document } = await load();
    const c = mod.createBffClient({ fetch: fakeBff({ user: null }).fetch, pollInterval: 0 });
    answerWith({ source: 'bff-silent-login', isLoggedIn: false });
    assert.equal(await c.silentLogin(), false);
    assert.equal(document.body.children.length, 0);
  });

  for (const [name, message, opts] of [
    ['another origin', { source: 'bff-silent-login', isLoggedIn: true }, { origin: 'https://evil.example' }],
    ['another window', { source: 'bff-silent-login', isLoggedIn: true }, { fromFrame: false }],
    ['another message', { source: 'something-else', isLoggedIn: true }, {}],
  ]) {
    test(`a message from ${name} is ignored: false after the timeout, iframe removed`, async () => {
      const { mod, document } = await load();
      const c = mod.createBffClient({ fetch: fakeBff({ user: null }).fetch, pollInterval: 0 });
      answerWith(message, opts);
      const result = c.silentLogin({ timeout: 3000 });
      await settle();
      assert.equal(document.body.children.length, 1);
      mock.timers.tick(3000);
      assert.equal(await result, false);
      assert.equal(document.body.children.length, 0);
    });
  }

  test('concurrent calls share one iframe', async () => {
    const { mod, document } = await load();
    const c = mod.createBffClient({ fetch: fakeBff({ user: null }).fetch, pollInterval: 0 });
    let created = 0;
    const orig = document.createElement;
    document.createElement = (t) => {
      created++;
      return orig(t);
    };
    const a = c.silentLogin({ timeout: 1000 });
    const b = c.silentLogin({ timeout: 1000 });
    assert.equal(a, b);
    mock.timers.tick(1000);
    assert.equal(await a, false);
    assert.equal(created, 1);
  });
});
