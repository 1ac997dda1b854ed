#!/usr/bin/env node
// A deliberately small stand-in for the gateway, used only to check the JavaScript side of the
// test setup (the SPA, e2e.mjs, the IdP's browser flow) without the Rust gateway. It follows the
// Duende.BFF browser contract closely enough for the sample SPA; it is NOT a reference for the
// gateway's security behaviour (no returnUrl validation, no refresh, no store, no limits).
//
//   node testing/browser/mock-bff.mjs --port <P> --issuer <idp> --api <http://127.0.0.1:port>
//        [--client-id spa-bff] [--client-secret secret-for-tests-only-0123456789]
//
// Prints `READY {"port":<port>}`. Serves examples/spa at /, /bff/client.js, /bff/login,
// /signin-oidc, /bff/user, /bff/logout, /signout-callback-oidc and proxies /api/* to --api with the user's
// access token.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import * as jose from 'jose';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    issuer: { type: 'string' },
    api: { type: 'string' },
    'client-id': { type: 'string', default: 'spa-bff' },
    'client-secret': { type: 'string', default: 'secret-for-tests-only-0123456789' },
  },
  strict: true,
});
if (!args.issuer || !args.api) {
  process.stderr.write('usage: node testing/browser/mock-bff.mjs --port <P> --issuer <idp> --api <base url>\n');
  process.exit(2);
}

const spaDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples/spa');
const clientJs = path.resolve(spaDir, '../../clients/js/src/index.js');
const COOKIE = 'bff-auth';
const SESSION_SECONDS = 3600;
const basic = `Basic ${Buffer.from(`${encodeURIComponent(args['client-id'])}:${encodeURIComponent(args['client-secret'])}`).toString('base64')}`;

const sessions = new Map(); // cookie value -> { claims, tokens, sid, expires }
const pending = new Map(); // state -> { verifier, nonce, returnUrl }
let meta;
let jwks;

async function discover() {
  if (!meta) {
    meta = await (await fetch(`${args.issuer}/.well-known/openid-configuration`)).json();
    jwks = jose.createRemoteJWKSet(new URL(meta.jwks_uri));
  }
  return meta;
}

function cookies(req) {
  return Object.fromEntries((req.headers.cookie ?? '').split(';').map((c) => c.trim().split('=')).filter((p) => p.length === 2));
}

function send(res, status, body = '', headers = {}) {
  res.writeHead(status, { 'cache-control': 'no-store', ...headers });
  res.end(body);
}

const redirect = (res, location, headers = {}) => send(res, 302, '', { location, ...headers });

async function handle(req, res, origin) {
  const url = new URL(req.url, origin);
  const sessionId = cookies(req)[COOKIE];
  const session = sessionId ? sessions.get(sessionId) : undefined;
  const csrf = req.headers['x-csrf'] === '1';

  if (url.pathname === '/bff/login') {
    const m = await discover();
    const verifier = crypto.randomBytes(32).toString('base64url');
    const state = crypto.randomBytes(16).toString('base64url');
    const nonce = crypto.randomBytes(16).toString('base64url');
    pending.set(state, { verifier, nonce, returnUrl: url.searchParams.get('returnUrl') ?? '/' });
    const auth = new URL(m.authorization_endpoint);
    auth.search = new URLSearchParams({
      client_id: args['client-id'],
      response_type: 'code',
      scope: 'openid profile email offline_access api.read',
      redirect_uri: `${origin}/signin-oidc`,
      state,
      nonce,
      code_challenge: crypto.createHash('sha256').update(verifier).digest('base64url'),
      code_challenge_method: 'S256',
    });
    redirect(res, auth.href);
    return;
  }

  if (url.pathname === '/signin-oidc') {
    const m = await discover();
    const tx = pending.get(url.searchParams.get('state'));
    pending.delete(url.searchParams.get('state'));
    if (!tx || url.searchParams.get('iss') !== m.issuer || !url.searchParams.get('code')) {
      send(res, 400, 'bad callback');
      return;
    }
    const tr = await fetch(m.token_endpoint, {
      method: 'POST',
      headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code: url.searchParams.get('code'),
        redirect_uri: `${origin}/signin-oidc`,
        code_verifier: tx.verifier,
      }),
    });
    const tokens = await tr.json();
    if (!tr.ok) {
      send(res, 400, `token error ${tokens.error}`);
      return;
    }
    const { payload } = await jose.jwtVerify(tokens.id_token, jwks, { issuer: m.issuer, audience: args['client-id'] });
    if (payload.nonce !== tx.nonce) {
      send(res, 400, 'nonce');
      return;
    }
    const id = crypto.randomBytes(32).toString('base64url');
    const claims = Object.entries(payload)
      .filter(([k]) => !['aud', 'exp', 'iat', 'nonce', 'at_hash', 'iss'].includes(k))
      .map(([type, value]) => ({ type, value }));
    sessions.set(id, { claims, tokens, sid: payload.sid, expires: Date.now() + SESSION_SECONDS * 1000 });
    redirect(res, tx.returnUrl, { 'set-cookie': `${COOKIE}=${id}; Path=/; HttpOnly; SameSite=Strict` });
    return;
  }

  if (url.pathname === '/bff/user') {
    if (!csrf || !session) {
      send(res, 401);
      return;
    }
    const body = [
      ...session.claims,
      { type: 'bff:logout_url', value: session.sid ? `/bff/logout?sid=${encodeURIComponent(session.sid)}` : '/bff/logout' },
      { type: 'bff:session_expires_in', value: Math.round((session.expires - Date.now()) / 1000) },
    ];
    send(res, 200, JSON.stringify(body), { 'content-type': 'application/json' });
    return;
  }

  if (url.pathname === '/bff/logout') {
    const m = await discover();
    if (session?.sid && url.searchParams.get('sid') !== session.sid) {
      send(res, 400, 'sid');
      return;
    }
    const endSession = new URL(m.end_session_endpoint);
    endSession.search = new URLSearchParams({ post_logout_redirect_uri: `${origin}/signout-callback-oidc` });
    if (session) {
      await fetch(m.revocation_endpoint, {
        method: 'POST',
        headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token: session.tokens.refresh_token, token_type_hint: 'refresh_token' }),
      });
      endSession.searchParams.set('id_token_hint', session.tokens.id_token);
      sessions.delete(sessionId);
    }
    redirect(res, endSession.href, { 'set-cookie': `${COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0` });
    return;
  }

  if (url.pathname === '/signout-callback-oidc') {
    redirect(res, '/');
    return;
  }

  if (url.pathname.startsWith('/api/')) {
    if (!csrf || !session) {
      send(res, 401);
      return;
    }
    const upstream = await fetch(`${args.api}${url.pathname.slice(4)}${url.search}`, {
      headers: { authorization: `Bearer ${session.tokens.access_token}`, 'x-csrf': '1' },
    });
    send(res, upstream.status, Buffer.from(await upstream.arrayBuffer()), { 'content-type': upstream.headers.get('content-type') ?? 'application/octet-stream' });
    return;
  }

  if (url.pathname === '/bff/client.js') {
    // the browser client the sample SPA imports, as the gateway serves it
    send(res, 200, fs.readFileSync(clientJs), { 'content-type': 'text/javascript' });
    return;
  }

  const file = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
  const types = { html: 'text/html; charset=utf-8', js: 'text/javascript', css: 'text/css' };
  if (/^[\w-]+\.(html|js|css)$/.test(file) && fs.existsSync(path.join(spaDir, file))) {
    send(res, 200, fs.readFileSync(path.join(spaDir, file)), { 'content-type': types[file.split('.').pop()] });
    return;
  }
  send(res, 404, 'not found');
}

const server = http.createServer((req, res) => {
  const origin = `http://127.0.0.1:${server.address().port}`;
  handle(req, res, origin).catch((err) => {
    process.stderr.write(`[mock-bff] ${err.stack}\n`);
    if (!res.headersSent) send(res, 500, 'error');
  });
});
server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`READY ${JSON.stringify({ port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
