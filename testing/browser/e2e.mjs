#!/usr/bin/env node
// Browser end-to-end check of a running gateway (+ IdP + API) with Debian's Chromium.
//
//   node testing/browser/e2e.mjs --gateway http://127.0.0.1:<port>
//        [--user alice --password alice] [--expect-name "Alice Smith"]
//        [--session-cookie <name>] [--screenshot /tmp/x.png] [--idp http://127.0.0.1:<idp port>]
//
// With --idp (the test IdP, testing/idp/server.mjs), the leak checks also look for every value
// that IdP reports at /__test/issued (codes, access/refresh/ID tokens), not only JWT-shaped
// text: opaque refresh tokens and authorization codes would pass an `eyJ` check.
//
// Steps: open the SPA, log in through the IdP's form, call the API, check that the session
// cookie is HttpOnly and invisible to scripts and that no same-origin response body carries a
// JWT, log out. Prints `ok - <step>` per step; on failure `not ok - <step>: <reason>` and exit 1.
// Chromium: /usr/bin/chromium (override with CHROMIUM_PATH); never downloads a browser.

import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const STEP_TIMEOUT = 15_000;
const OVERALL_TIMEOUT = 60_000;
const KNOWN_NAMES = { alice: 'Alice Smith', bob: 'Bob Jones' };

const { values: args } = parseArgs({
  options: {
    gateway: { type: 'string' },
    user: { type: 'string', default: 'alice' },
    password: { type: 'string' },
    'expect-name': { type: 'string' },
    'session-cookie': { type: 'string' },
    screenshot: { type: 'string' },
    idp: { type: 'string' },
    headed: { type: 'boolean', default: false },
  },
  strict: true,
});

if (!args.gateway) {
  process.stderr.write('usage: node testing/browser/e2e.mjs --gateway http://127.0.0.1:<port> [--user alice --password alice] [--screenshot /tmp/x.png]\n');
  process.exit(2);
}

const gateway = new URL(args.gateway);
const gatewayOrigin = gateway.origin;
const user = args.user;
const password = args.password ?? user;
const expectName = args['expect-name'] ?? KNOWN_NAMES[user] ?? user;

let browser;
let page;
let current = 'start';
let finished = false;

async function failAndExit(reason) {
  if (finished) return;
  finished = true;
  process.stdout.write(`not ok - ${current}: ${String(reason).split('\n')[0]}\n`);
  if (args.screenshot && page) {
    try {
      await page.screenshot({ path: args.screenshot, fullPage: true, timeout: 5000 });
      process.stderr.write(`screenshot saved to ${args.screenshot} (page URL ${page.url()})\n`);
    } catch (err) {
      process.stderr.write(`screenshot failed: ${err.message}\n`);
    }
  }
  await browser?.close().catch(() => {});
  process.exit(1);
}

const overall = setTimeout(() => {
  failAndExit(`overall timeout of ${OVERALL_TIMEOUT / 1000} s exceeded`);
}, OVERALL_TIMEOUT);

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

async function main() {
  await step('launch chromium', async () => {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      headless: !args.headed,
      timeout: STEP_TIMEOUT,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });

  // A fresh context: no cookies or storage from earlier runs.
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_TIMEOUT);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT);
  page = await context.newPage();

  // Every same-origin response body the page sees; checked for JWTs at the end.
  const bodies = [];
  page.on('response', (response) => {
    const url = new URL(response.url());
    if (url.origin !== gatewayOrigin) return;
    const status = response.status();
    if (status >= 300 && status < 400) return; // redirects have no readable body
    bodies.push(Promise.all([response.text(), response.allHeaders()])
      .then(([text, headers]) => ({
        url: `${url.pathname}${url.search}`,
        // Location is left out: the end-session redirect carries id_token_hint by design
        // (redirects are skipped above anyway); Set-Cookie carries the session id by design.
        text: text + Object.entries(headers)
          .filter(([name]) => name !== 'location' && name !== 'set-cookie')
          .map(([name, value]) => `\n${name}: ${value}`).join(''),
      }))
      .catch(() => ({ url: url.pathname, text: '' })));
  });

  // The values the test IdP issued so far (none without --idp).
  const issued = async () => {
    if (!args.idp) return [];
    const res = await fetch(new URL('/__test/issued', args.idp));
    check(res.ok, `${args.idp}/__test/issued answered ${res.status}`);
    const v = await res.json();
    check(v.authorization_codes.length > 0 && v.access_tokens.length > 0, 'the IdP reports no issued code or access token');
    return [...v.authorization_codes, ...v.access_tokens, ...v.refresh_tokens, ...v.id_tokens];
  };
  const leaksIn = (seen, secrets) => seen.filter(({ text }) => text.includes('eyJ') || secrets.some((s) => text.includes(s)));
  page.on('pageerror', (err) => process.stderr.write(`page error: ${err.message}\n`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') process.stderr.write(`console error: ${msg.text()}\n`);
  });

  await step('open the SPA anonymously', async () => {
    await page.goto(new URL('/', gateway).href, { waitUntil: 'domcontentloaded' });
    await page.locator('#login').waitFor({ state: 'visible' });
  });

  await step('click #login and reach the IdP login form', async () => {
    await page.locator('#login').click();
    await page.locator('input[name="login"]').waitFor({ state: 'visible' });
    check(new URL(page.url()).origin !== gatewayOrigin, `login form served by the gateway origin: ${page.url()}`);
  });

  await step(`sign in as ${user}`, async () => {
    await page.locator('input[name="login"]').fill(user);
    await page.locator('input[name="password"]').fill(password);
    await Promise.all([
      page.waitForURL((url) => url.origin === gatewayOrigin),
      page.locator('button[type="submit"]').click(),
    ]);
  });

  await step(`SPA shows "${expectName}"`, async () => {
    await page.locator('#user-name', { hasText: expectName }).waitFor({ state: 'visible' });
    const href = await page.locator('#logout').getAttribute('href');
    check(href && href.includes('logout'), `#logout href is ${href}`);
  });

  await step('call the API through the gateway', async () => {
    await page.locator('#call-api').click();
    await page.locator('#api-result', { hasText: user }).waitFor({ state: 'visible' });
    const text = await page.locator('#api-result').innerText();
    check(!/failed/i.test(text), `API result: ${text}`);
  });

  await step('session cookie is HttpOnly and invisible to scripts', async () => {
    const cookies = await context.cookies(gatewayOrigin);
    // IdP cookies share the host (cookies ignore ports): leave them out
    const wanted = args['session-cookie'];
    const session = cookies.filter((c) => (wanted ? c.name === wanted : /bff/i.test(c.name) && !c.name.startsWith('idp_')));
    check(session.length > 0, `no session cookie among [${cookies.map((c) => c.name).join(', ')}]`);
    for (const c of session) {
      check(c.httpOnly, `cookie ${c.name} is not HttpOnly`);
    }
    const visible = await page.evaluate(() => document.cookie);
    for (const c of session) {
      check(!visible.includes(c.name) && !visible.includes(c.value), `document.cookie exposes ${c.name}`);
    }
  });

  await step('no token in any same-origin response body', async () => {
    const seen = await Promise.all(bodies);
    check(seen.length > 0, 'no same-origin responses recorded');
    const leaks = leaksIn(seen, await issued());
    check(leaks.length === 0, `a token or code in ${leaks.map((l) => l.url).join(', ')}`);
  });

  await step('log out and return to the anonymous SPA', async () => {
    await page.locator('#logout').click();
    await page.waitForURL((url) => url.origin === gatewayOrigin && !url.pathname.startsWith('/bff/'));
    await page.locator('#login').waitFor({ state: 'visible' });
    const { status, text } = await page.evaluate(async () => {
      const res = await fetch('/bff/user', { headers: { 'X-CSRF': '1' } });
      return { status: res.status, text: await res.text() };
    });
    // 401 by default; some BFFs are configured to answer 200 with `null` instead
    check(status === 401 || (status === 200 && text.trim() === 'null'), `/bff/user after logout answered ${status}`);
  });

  await step('no token in any same-origin response body after logout', async () => {
    const seen = await Promise.all(bodies);
    const leaks = leaksIn(seen, await issued());
    check(leaks.length === 0, `a token or code in ${leaks.map((l) => l.url).join(', ')}`);
  });

  if (args.screenshot) {
    await page.screenshot({ path: args.screenshot, fullPage: true }).catch(() => {});
  }
  finished = true;
  clearTimeout(overall);
  await browser.close();
  process.exit(0);
}

main().catch((err) => failAndExit(err?.stack ?? err));
