#!/usr/bin/env node
// One headless Chromium session against a real gateway + test IdP, exercising the browser
// client (@portcullis/bff-client) exactly as the gateway serves it at /bff/client.js.
//
//   node testing/browser/client-e2e.mjs --gateway http://127.0.0.1:<port> --idp <issuer>
//        [--poll-ms 1000] [--idle-s 6] [--screenshot f.png]
//
// The gateway must serve testing/browser/client-page as its SPA, with a short idle timeout
// (--idle-s) and the route /api → examples/api (user token); the page polls every --poll-ms.
// Steps print `ok - <step>`; a failure prints `not ok - <step>: <reason>` and exits 1.
// Driven by crates/portcullis-cli/tests/browser_client.rs.

import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const STEP_TIMEOUT = 25_000;
const OVERALL_TIMEOUT = 120_000;

const { values: args } = parseArgs({
  options: {
    gateway: { type: 'string' },
    idp: { type: 'string' },
    'poll-ms': { type: 'string', default: '1000' },
    'idle-s': { type: 'string', default: '6' },
    screenshot: { type: 'string' },
  },
  strict: true,
});
if (!args.gateway || !args.idp) {
  process.stderr.write('usage: node testing/browser/client-e2e.mjs --gateway <url> --idp <issuer> [--poll-ms 1000] [--idle-s 6]\n');
  process.exit(2);
}
const gateway = new URL(args.gateway);
const origin = gateway.origin;
const POLL = Number(args['poll-ms']);
const IDLE = Number(args['idle-s']) * 1000;
const FLOW_PATHS = ['/bff/login', '/signin-oidc', '/signout-callback-oidc', '/bff/silent-login-callback', '/bff/logout'];

let browser;
let page;
let current = 'start';
let finished = false;

async function failAndExit(reason) {
  if (finished) return;
  finished = true;
  process.stdout.write(`not ok - ${current}: ${String(reason).split('\n')[0]}\n`);
  if (args.screenshot && page) {
    await page.screenshot({ path: args.screenshot, fullPage: true, timeout: 5000 }).catch(() => {});
    process.stderr.write(`screenshot: ${args.screenshot} (page URL ${page.url()})\n`);
  }
  await browser?.close().catch(() => {});
  process.exit(1);
}
const overall = setTimeout(() => failAndExit(`overall timeout of ${OVERALL_TIMEOUT / 1000} s`), OVERALL_TIMEOUT);

async function step(name, fn) {
  current = name;
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`step timed out after ${STEP_TIMEOUT / 1000} s`)), STEP_TIMEOUT);
      }),
    ]);
  } catch (err) {
    clearTimeout(timer);
    await failAndExit(err?.message ?? err);
    return;
  }
  clearTimeout(timer);
  process.stdout.write(`ok - ${name}\n`);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until the page's recorded events include one of `type` after index `from`. */
async function waitEvent(p, type, from, timeout) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const events = await p.evaluate(() => window.events);
    const e = events.slice(from).find((x) => x.type === type);
    if (e) return e;
    if (Date.now() > deadline) throw new Error(`no ${type} event within ${timeout} ms (events: ${JSON.stringify(events.slice(from))})`);
    await sleep(100);
  }
}

const eventCount = (p) => p.evaluate(() => window.events.length);

async function signIn(p, user) {
  await p.locator('input[name="login"]').waitFor({ state: 'visible' });
  check(new URL(p.url()).origin !== origin, `login form served by the gateway: ${p.url()}`);
  await p.locator('input[name="login"]').fill(user);
  await p.locator('input[name="password"]').fill(user);
  await Promise.all([
    p.waitForURL((u) => u.origin === origin && !FLOW_PATHS.some((f) => u.pathname.startsWith(f))),
    p.locator('button[type="submit"]').click(),
  ]);
}

async function main() {
  await step('launch chromium', async () => {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      headless: true,
      timeout: STEP_TIMEOUT,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_TIMEOUT);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT);

  // Every request of every tab and frame: the anti-forgery header must never leave the origin.
  const requests = [];
  context.on('request', (r) => {
    const u = new URL(r.url());
    if (!u.protocol.startsWith('http')) return;
    requests.push({
      url: u,
      csrf: r.headers()['x-csrf'] ?? null,
      navigation: r.isNavigationRequest(),
      mainFrame: r.frame() === r.frame().page()?.mainFrame(),
      at: Date.now(),
    });
  });
  const loginNavigations = () => requests.filter((r) => r.navigation && r.mainFrame && r.url.origin === origin && r.url.pathname === '/bff/login');
  const quietPolls = (since) => requests.filter((r) => r.at >= since && r.url.origin === origin && r.url.pathname === '/bff/user' && r.url.search === '?slide=false');

  page = await context.newPage();
  page.on('pageerror', (err) => process.stderr.write(`page error: ${err.message}\n`));
  const clientJs = [];
  page.on('response', (r) => {
    if (new URL(r.url()).pathname === '/bff/client.js') clientJs.push({ status: r.status(), type: r.headers()['content-type'], etag: r.headers().etag });
  });

  await step('anonymous start: the page imports /bff/client.js and user() is null', async () => {
    await page.goto(new URL('/orders/7?tab=2', gateway).href, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => window.ready !== undefined);
    const user = await page.evaluate(() => window.ready);
    check(user === null, `user() is ${JSON.stringify(user)}`);
    check(clientJs.length === 1 && clientJs[0].status === 200, `client.js responses: ${JSON.stringify(clientJs)}`);
    check(clientJs[0].type.startsWith('text/javascript') && clientJs[0].etag, `client.js headers: ${JSON.stringify(clientJs[0])}`);
  });

  await step('two 401s from API calls: exactly one login navigation, back to the same client route', async () => {
    // Not awaited in the page: the login navigation tears the page down.
    await page.evaluate(() => {
      bff.fetch('/api/whoami');
      bff.fetch('/api/whoami?second');
    });
    await signIn(page, 'alice');
    const back = new URL(page.url());
    check(back.pathname === '/orders/7' && back.search === '?tab=2', `back at ${back.pathname}${back.search}`);
    const n = loginNavigations().length;
    check(n === 1, `${n} login navigations`);
    const apiCalls = requests.filter((r) => r.url.origin === origin && r.url.pathname === '/api/whoami');
    check(apiCalls.length === 2 && apiCalls.every((r) => r.csrf === '1'), `API calls: ${apiCalls.length}, headers ${apiCalls.map((r) => r.csrf)}`);
  });

  await step('user() shows the claims; an API call succeeds', async () => {
    const user = await page.evaluate(() => window.ready);
    check(user && user.sub === 'alice' && user.claims.name === 'Alice Smith', `user: ${JSON.stringify(user)}`);
    check(typeof user.sid === 'string' && user.sid.length > 0, `sid: ${user.sid}`);
    check(user.logoutUrl === `/bff/logout?sid=${encodeURIComponent(user.sid)}`, `logoutUrl: ${user.logoutUrl}`);
    check(user.expiresIn > 0 && user.expiresIn <= IDLE / 1000, `expiresIn: ${user.expiresIn}`);
    const api = await page.evaluate(async () => {
      const r = await bff.fetch('/api/whoami');
      return { status: r.status, body: await r.json() };
    });
    check(api.status === 200 && api.body.sub === 'alice', `API: ${JSON.stringify(api)}`);
  });

  await step('requests to other origins go out without the anti-forgery header', async () => {
    const other = new URL(origin);
    other.hostname = 'localhost'; // the same server under another origin
    const targets = [`${other.origin}/api/whoami`, `${args.idp}/.well-known/openid-configuration`];
    await page.evaluate(async (urls) => {
      for (const u of urls) await bff.fetch(u).catch(() => {}); // CORS may refuse the answer
    }, targets);
    for (const t of targets) {
      const seen = requests.filter((r) => r.url.href === new URL(t).href);
      check(seen.length === 1, `${t} requested ${seen.length} times`);
      check(seen[0].csrf === null, `${t} carried X-CSRF`);
    }
  });

  await step('the idle timeout ends the session while the page polls; sessionExpiring comes first', async () => {
    // One sliding call to know the end exactly; from then on only the page's polls.
    const from = await eventCount(page);
    const user = await page.evaluate(async () => {
      await bff.fetch('/api/whoami');
      return bff.user({ refresh: true });
    });
    const start = Date.now();
    const ended = await waitEvent(page, 'sessionEnded', from, IDLE + 4 * POLL);
    const expiring = await waitEvent(page, 'sessionExpiring', from, 0);
    const polls = quietPolls(start).length;
    process.stderr.write(`idle: expected end ${user.expiresAt}, sessionExpiring at ${expiring.at} (${user.expiresAt - expiring.at} ms before), sessionEnded at ${ended.at} (${ended.at - user.expiresAt} ms after), ${polls} polls\n`);
    check(polls >= IDLE / POLL - 2, `only ${polls} polls while waiting for the idle timeout`);
    check(expiring.at < ended.at && expiring.at <= user.expiresAt - 2000, `sessionExpiring at ${expiring.at}, end ${user.expiresAt}`);
    check(ended.at >= user.expiresAt - 1000, `session ended ${user.expiresAt - ended.at} ms before its idle timeout`);
    check(ended.at <= user.expiresAt + 2 * POLL, `sessionEnded ${ended.at - user.expiresAt} ms after the idle timeout`);
    const status = await page.evaluate(async () => (await fetch('/bff/user', { headers: { 'X-CSRF': '1' } })).status);
    check(status === 401, `/bff/user after the idle timeout: ${status}`);
  });

  await step('silent login with a live IdP session: true, no iframe left', async () => {
    const from = await eventCount(page);
    const r = await page.evaluate(async () => {
      const t = performance.now();
      const ok = await bff.silentLogin({ timeout: 8000 });
      return { ok, ms: performance.now() - t, frames: document.querySelectorAll('iframe').length, sub: bff.currentUser?.sub };
    });
    check(r.ok === true && r.ms < 8000, `silentLogin: ${JSON.stringify(r)}`);
    check(r.frames === 0, `${r.frames} iframes left`);
    check(r.sub === 'alice', `user after silent login: ${r.sub}`);
    await waitEvent(page, 'userChanged', from, 0);
  });

  await step('a logout in a second tab is noticed by the first tab within two poll intervals', async () => {
    const from = await eventCount(page);
    const page2 = await context.newPage();
    let loggedOutAt;
    page2.on('response', (r) => {
      if (new URL(r.url()).pathname === '/bff/logout') loggedOutAt ??= Date.now();
    });
    await page2.goto(new URL('/account', gateway).href, { waitUntil: 'domcontentloaded' });
    await page2.waitForFunction(() => window.ready !== undefined);
    const u2 = await page2.evaluate(() => window.ready);
    check(u2?.sub === 'alice', `second tab user: ${JSON.stringify(u2)}`);
    await page2.evaluate(() => {
      bff.logout({ returnUrl: '/bye' });
    });
    await page2.waitForURL((u) => u.origin === origin && u.pathname === '/bye');
    const ended = await waitEvent(page, 'sessionEnded', from, 4 * POLL + 2000);
    const visibility = await page.evaluate(() => document.visibilityState);
    process.stderr.write(`second-tab logout noticed ${ended.at - loggedOutAt} ms after /bff/logout answered (first tab ${visibility})\n`);
    check(ended.at - loggedOutAt <= 2 * POLL, `noticed ${ended.at - loggedOutAt} ms after the logout`);
    await page2.close();
  });

  await step('silent login without an IdP session: false within the timeout, no iframe left', async () => {
    const r = await page.evaluate(async () => {
      const t = performance.now();
      const ok = await bff.silentLogin({ timeout: 8000 });
      return { ok, ms: performance.now() - t, frames: document.querySelectorAll('iframe').length, user: bff.currentUser };
    });
    // well inside the timeout: the callback page's answer decided, not the timer
    check(r.ok === false && r.ms < 6000, `silentLogin: ${JSON.stringify(r)}`);
    check(r.frames === 0, `${r.frames} iframes left`);
    check(r.user === null, `user: ${JSON.stringify(r.user)}`);
  });

  await step('log in again with login()', async () => {
    await page.evaluate(() => {
      bff.login({ returnUrl: '/orders/8' });
    });
    await signIn(page, 'alice');
    check(new URL(page.url()).pathname === '/orders/8', `back at ${page.url()}`);
    const user = await page.evaluate(() => window.ready);
    check(user?.sub === 'alice', `user: ${JSON.stringify(user)}`);
  });

  await step('a back-channel logout is noticed by the page within two poll intervals', async () => {
    const from = await eventCount(page);
    const res = await fetch(new URL('/__test/backchannel-logout', args.idp), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ sub: 'alice' }),
    });
    const sent = await res.json();
    const doneAt = Date.now();
    check(res.ok && sent.sent?.length > 0 && sent.sent.every((s) => s.status === 200), `IdP back-channel logout: ${JSON.stringify(sent)}`);
    const ended = await waitEvent(page, 'sessionEnded', from, 4 * POLL + 2000);
    process.stderr.write(`back-channel logout noticed ${ended.at - doneAt} ms after the IdP's call returned\n`);
    check(ended.at - doneAt <= 2 * POLL, `noticed ${ended.at - doneAt} ms after the back-channel logout`);
  });

  await step('no request to another origin ever carried the anti-forgery header', async () => {
    const foreign = requests.filter((r) => r.url.origin !== origin);
    const own = requests.filter((r) => r.url.origin === origin && r.csrf === '1');
    check(foreign.length > 0 && own.length > 0, `seen ${foreign.length} foreign and ${own.length} own requests with the header`);
    const leaked = foreign.filter((r) => r.csrf !== null);
    check(leaked.length === 0, `X-CSRF sent to ${leaked.map((r) => r.url.href).join(', ')}`);
  });

  finished = true;
  clearTimeout(overall);
  await browser.close();
  process.exit(0);
}

main().catch((err) => failAndExit(err?.stack ?? err));
