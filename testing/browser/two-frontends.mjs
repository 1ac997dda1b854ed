#!/usr/bin/env node
// Browser check of two SPAs on two path frontends of one gateway, in ONE browser context:
// log into /a as alice and /b as bob, each page shows its own user and its own API result
// (sub and client_id); log out of /b, /a stays logged in. Between the two logins the test
// IdP's own cookies (`idp_*`) are dropped, so the second login is a new IdP session for
// another user (switching users inside one IdP session makes the IdP end the first one,
// with a back-channel logout, which is not what is tested here).
//
//   node testing/browser/two-frontends.mjs --gateway http://127.0.0.1:<port> [--screenshot f.png]
//
// Prints `ok - <step>` per step; on failure `not ok - <step>: <reason>` and exit 1.
// Chromium: /usr/bin/chromium (override with CHROMIUM_PATH).

import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const STEP_TIMEOUT = 15_000;
const { values: args } = parseArgs({
  options: {
    gateway: { type: 'string' },
    screenshot: { type: 'string' },
    'client-a': { type: 'string', default: 'spa-bff' },
    'client-b': { type: 'string', default: 'admin-bff' },
  },
  strict: true,
});
if (!args.gateway) {
  process.stderr.write('usage: node testing/browser/two-frontends.mjs --gateway http://127.0.0.1:<port>\n');
  process.exit(2);
}
const origin = new URL(args.gateway).origin;
let browser;
let page;
let current = 'start';

async function fail(reason) {
  process.stdout.write(`not ok - ${current}: ${String(reason).split('\n')[0]}\n`);
  if (args.screenshot && page) {
    await page.screenshot({ path: args.screenshot, fullPage: true, timeout: 5000 }).catch(() => {});
  }
  await browser?.close().catch(() => {});
  process.exit(1);
}

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
    await fail(err?.message ?? err);
  }
  clearTimeout(timer);
  process.stdout.write(`ok - ${name}\n`);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function signIn(user) {
  await page.locator('input[name="login"]').waitFor({ state: 'visible' });
  await page.locator('input[name="login"]').fill(user);
  await page.locator('input[name="password"]').fill(user);
  await Promise.all([
    page.waitForURL((url) => url.origin === origin),
    page.locator('button[type="submit"]').click(),
  ]);
}

async function shows(prefix, name, user, client) {
  await page.goto(`${origin}${prefix}/`, { waitUntil: 'domcontentloaded' });
  await page.locator('#user-name', { hasText: name }).waitFor({ state: 'visible' });
  const logout = await page.locator('#logout').getAttribute('href');
  check(logout?.startsWith(`${prefix}/bff/logout?sid=`), `#logout href is ${logout}`);
  await page.locator('#call-api').click();
  await page.locator('#api-result', { hasText: `sub: ${user}` }).waitFor({ state: 'visible' });
  const text = await page.locator('#api-result').innerText();
  check(text.includes(`client_id: ${client}`), `API result on ${prefix}: ${text}`);
}

async function anonymous(prefix) {
  await page.goto(`${origin}${prefix}/`, { waitUntil: 'domcontentloaded' });
  await page.locator('#login').waitFor({ state: 'visible' });
}

async function main() {
  await step('launch chromium', async () => {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      headless: true,
      timeout: STEP_TIMEOUT,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_TIMEOUT);
  page = await context.newPage();
  page.on('pageerror', (err) => process.stderr.write(`page error: ${err.message}\n`));

  await step('both SPAs start anonymous', async () => {
    await anonymous('/a');
    await anonymous('/b');
  });
  await step('log into /a as alice', async () => {
    await page.goto(`${origin}/a/`, { waitUntil: 'domcontentloaded' });
    await page.locator('#login').click();
    await signIn('alice');
    check(new URL(page.url()).pathname.startsWith('/a/'), `back at ${page.url()}`);
  });
  await step('/a shows alice and her API result; /b is still anonymous', async () => {
    await shows('/a', 'Alice Smith', 'alice', args['client-a']);
    await anonymous('/b');
  });
  await step('log into /b as bob', async () => {
    const keep = (await context.cookies()).filter((c) => !c.name.startsWith('idp_'));
    await context.clearCookies();
    await context.addCookies(keep);
    await page.goto(`${origin}/b/`, { waitUntil: 'domcontentloaded' });
    await page.locator('#login').click();
    await signIn('bob');
    check(new URL(page.url()).pathname.startsWith('/b/'), `back at ${page.url()}`);
  });
  await step('each SPA shows its own user and API result', async () => {
    await shows('/b', 'Bob Jones', 'bob', args['client-b']);
    await shows('/a', 'Alice Smith', 'alice', args['client-a']);
  });
  await step('log out of /b', async () => {
    await page.goto(`${origin}/b/`, { waitUntil: 'domcontentloaded' });
    await page.locator('#user-name', { hasText: 'Bob Jones' }).waitFor({ state: 'visible' });
    await page.locator('#logout').click();
    await page.waitForURL((url) => url.origin === origin && url.pathname.startsWith('/b'));
    await page.locator('#login').waitFor({ state: 'visible' });
  });
  await step('/a stays logged in, /b is anonymous', async () => {
    await shows('/a', 'Alice Smith', 'alice', args['client-a']);
    await anonymous('/b');
  });
  await browser.close();
  process.exit(0);
}

main().catch((err) => fail(err?.stack ?? err));
