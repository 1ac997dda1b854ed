#!/usr/bin/env node
// Self-test of the test IdP and the example API, and executable documentation of the plain
// HTTP steps the Rust harness performs: login (code + PKCE), code exchange, refresh (with and
// without rotation), RFC 8693 token exchange, revocation, restart with a state file,
// RP-initiated logout via the form, back-channel logout and the /__test/* controls.
//
//   node testing/idp/selftest.mjs        (exit 0 on success; prints TAP-like lines)

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const children = new Set();
const deadline = setTimeout(() => fail('overall', 'timed out after 90 s'), 90_000);
let passed = 0;

function cleanup() {
  for (const child of children) child.kill('SIGTERM');
}

function fail(step, reason) {
  process.stdout.write(`not ok - ${step}: ${reason}\n`);
  cleanup();
  process.exit(1);
}

function ok(step) {
  passed += 1;
  process.stdout.write(`ok - ${step}\n`);
}

async function step(name, fn) {
  try {
    await fn();
    ok(name);
  } catch (err) {
    fail(name, err?.stack ?? err);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// Start a node script and resolve with the JSON after its READY line.
function start(script, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(root, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    child.on('exit', () => children.delete(child));
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`${script} not ready in 15 s: ${err}`)), 15_000);
    child.stderr.on('data', (d) => {
      err += d;
      if (process.env.SELFTEST_VERBOSE) process.stderr.write(d);
    });
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^READY (.*)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, info: JSON.parse(m[1]) });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${script} exited ${code}: ${err}`));
    });
  });
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) {
      resolve();
      return;
    }
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

// Minimal cookie jar: one host, names only (paths ignored; sending extra cookies is harmless).
class Jar {
  constructor() { this.cookies = new Map(); }

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const i = pair.indexOf('=');
      const name = pair.slice(0, i).trim();
      const value = pair.slice(i + 1).trim();
      const expired = attrs.some((a) => /^\s*expires=/i.test(a) && Date.parse(a.split('=')[1]) < Date.now())
        || attrs.some((a) => /^\s*max-age=0/i.test(a));
      if (!value || expired) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

async function req(jar, url, { method = 'GET', form, headers = {} } = {}) {
  const res = await fetch(url, {
    method,
    redirect: 'manual',
    headers: {
      ...(jar && jar.cookies.size ? { cookie: jar.header() } : {}),
      ...(form ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      ...headers,
    },
    body: form ? new URLSearchParams(form) : undefined,
    signal: AbortSignal.timeout(10_000),
  });
  if (jar) jar.store(res);
  const text = await res.text();
  return { status: res.status, location: res.headers.get('location'), text, headers: res.headers };
}

const CLIENT_ID = 'spa-bff';
const CLIENT_SECRET = 'secret-for-tests-only-0123456789';
const basic = `Basic ${Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64')}`;

async function tokenRequest(issuer, form) {
  const res = await req(null, `${issuer}/token`, { method: 'POST', form, headers: { authorization: basic } });
  return { status: res.status, body: JSON.parse(res.text) };
}

// The login a browser (or the Rust harness) performs. Returns the callback's query + verifier.
async function login(issuer, jar, rp, { user = 'alice', password = 'alice', scope = 'openid profile email offline_access api.read' } = {}) {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = crypto.randomBytes(8).toString('hex');
  const nonce = crypto.randomBytes(8).toString('hex');
  const auth = new URL(`${issuer}/auth`);
  auth.search = new URLSearchParams({
    client_id: CLIENT_ID,
    response_type: 'code',
    scope,
    redirect_uri: `${rp}/signin-oidc`,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });
  // 1. authorization request -> 303 to the interaction page (or straight back on SSO)
  let r = await req(jar, auth.href);
  assert(r.status === 303, `GET /auth: expected 303, got ${r.status} ${r.text.slice(0, 200)}`);
  let loc = new URL(r.location, issuer);
  if (loc.pathname.startsWith('/interaction/')) {
    // 2. login form
    r = await req(jar, loc.href);
    assert(r.status === 200 && /name="login"/.test(r.text), `GET ${loc.pathname}: ${r.status}`);
    const action = /<form method="post" action="([^"]+)"/.exec(r.text)[1];
    // 3. credentials -> 303 back to /auth/<uid>
    r = await req(jar, new URL(action, issuer).href, { method: 'POST', form: { login: user, password } });
    assert(r.status === 303, `POST ${action}: expected 303, got ${r.status}`);
    loc = new URL(r.location, issuer);
    assert(loc.pathname.startsWith('/auth/'), `login redirect went to ${loc}`);
    // 4. resume -> 303 to the redirect_uri with code, state, iss
    r = await req(jar, loc.href);
    assert(r.status === 303, `GET ${loc.pathname}: expected 303, got ${r.status} ${r.text.slice(0, 300)}`);
    loc = new URL(r.location, issuer);
  }
  assert(loc.href.startsWith(`${rp}/signin-oidc?`), `expected the redirect_uri, got ${loc}`);
  const q = Object.fromEntries(loc.searchParams);
  assert(q.state === state, 'state mismatch');
  assert(q.iss === issuer, `iss parameter ${q.iss}`);
  return { ...q, verifier, nonce, redirectUri: `${rp}/signin-oidc` };
}

async function exchange(issuer, cb) {
  return tokenRequest(issuer, {
    grant_type: 'authorization_code',
    code: cb.code,
    redirect_uri: cb.redirectUri,
    code_verifier: cb.verifier,
  });
}

async function json(url, init) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });
  return { status: res.status, body: await res.json() };
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-idp-selftest-'));
  process.on('exit', () => { cleanup(); fs.rmSync(tmp, { recursive: true, force: true }); });

  // A stand-in relying party: receives back-channel logout tokens.
  const backchannel = [];
  const rpServer = http.createServer((rq, rs) => {
    let body = '';
    rq.on('data', (d) => { body += d; });
    rq.on('end', () => {
      if (rq.method === 'POST' && rq.url === '/bff/backchannel') {
        backchannel.push(new URLSearchParams(body).get('logout_token'));
      }
      rs.writeHead(200).end();
    });
  });
  await new Promise((r) => { rpServer.listen(0, '127.0.0.1', r); });
  rpServer.unref();
  const rp = `http://127.0.0.1:${rpServer.address().port}`;

  const config = (extra) => {
    const file = path.join(tmp, `config-${crypto.randomUUID()}.json`);
    fs.writeFileSync(file, JSON.stringify({
      clients: [{
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        redirect_uris: [`${rp}/signin-oidc`],
        post_logout_redirect_uris: [`${rp}/signout-callback-oidc`],
        backchannel_logout_uri: `${rp}/bff/backchannel`,
        backchannel_logout_session_required: true,
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
        scope: 'openid profile email offline_access api api.read api.write',
      }],
      access_token_ttl: 300,
      id_token_ttl: 300,
      ...extra,
    }));
    return file;
  };

  const stateFile = path.join(tmp, 'state', 'idp-state.json');
  const persistentConfig = config({ rotate_refresh_token: false, state_file: stateFile });
  let idp = await start('testing/idp/server.mjs', ['--port', '0', '--config', persistentConfig]);
  const { issuer, port } = idp.info;
  const api = await start('examples/api/server.mjs', ['--port', '0', '--issuer', issuer]);
  const apiBase = `http://127.0.0.1:${api.info.port}`;

  let discovery;
  await step('discovery', async () => {
    assert(issuer === `http://127.0.0.1:${port}`, `issuer ${issuer}`);
    ({ body: discovery } = await json(`${issuer}/.well-known/openid-configuration`));
    assert(discovery.issuer === issuer, 'issuer');
    assert(discovery.authorization_response_iss_parameter_supported === true, 'RFC 9207 flag');
    for (const p of ['none', 'login', 'consent']) assert(discovery.prompt_values_supported.includes(p), `prompt ${p}`);
    assert(discovery.code_challenge_methods_supported.includes('S256'), 'S256');
    assert(discovery.backchannel_logout_supported, 'backchannel');
    for (const e of ['end_session_endpoint', 'revocation_endpoint', 'introspection_endpoint', 'jwks_uri']) assert(discovery[e], e);
    const { body: jwks } = await json(discovery.jwks_uri);
    const algs = jwks.keys.map((k) => k.alg).sort().join(',');
    assert(algs === 'ES256,RS256', `jwks algs ${algs}`);
    assert(jwks.keys.every((k) => !k.d), 'private material in JWKS');
  });

  const jar = new Jar();
  let tokens;
  let cb;
  await step('login: wrong password re-renders the form with 200', async () => {
    const auth = new URL(`${issuer}/auth`);
    auth.search = new URLSearchParams({
      client_id: CLIENT_ID, response_type: 'code', scope: 'openid', redirect_uri: `${rp}/signin-oidc`, state: 's', code_challenge: 'x'.repeat(43), code_challenge_method: 'S256',
    });
    const j = new Jar();
    const r1 = await req(j, auth.href);
    const form = await req(j, new URL(r1.location, issuer).href);
    const action = /<form method="post" action="([^"]+)"/.exec(form.text)[1];
    const r = await req(j, new URL(action, issuer).href, { method: 'POST', form: { login: 'alice', password: 'nope' } });
    assert(r.status === 200 && /Invalid username or password/.test(r.text) && /name="password"/.test(r.text), `got ${r.status}`);
  });

  await step('login: PKCE is required', async () => {
    const auth = new URL(`${issuer}/auth`);
    auth.search = new URLSearchParams({
      client_id: CLIENT_ID, response_type: 'code', scope: 'openid', redirect_uri: `${rp}/signin-oidc`, state: 's',
    });
    const r = await req(new Jar(), auth.href);
    assert(r.status === 303 && /error=invalid_request/.test(r.location), `got ${r.status} ${r.location}`);
  });

  await step('login: prompt=none without IdP session -> login_required', async () => {
    const auth = new URL(`${issuer}/auth`);
    auth.search = new URLSearchParams({
      client_id: CLIENT_ID, response_type: 'code', scope: 'openid', redirect_uri: `${rp}/signin-oidc`, state: 's', prompt: 'none', code_challenge: 'x'.repeat(43), code_challenge_method: 'S256',
    });
    const r = await req(new Jar(), auth.href);
    const loc = new URL(r.location);
    assert(r.status === 303 && loc.searchParams.get('error') === 'login_required' && loc.searchParams.get('state') === 's', `got ${r.status} ${r.location}`);
  });

  await step('login: code + PKCE via plain HTTP', async () => {
    cb = await login(issuer, jar, rp);
    assert(cb.code, 'no code');
  });

  await step('token: code exchange (client_secret_basic) gives JWT access token, id_token, refresh token', async () => {
    const r = await exchange(issuer, cb);
    assert(r.status === 200, `status ${r.status} ${JSON.stringify(r.body)}`);
    tokens = r.body;
    assert(tokens.token_type === 'Bearer', `token_type ${tokens.token_type}`);
    assert(tokens.refresh_token, 'no refresh_token');
    const at = jose.decodeJwt(tokens.access_token);
    assert(jose.decodeProtectedHeader(tokens.access_token).typ === 'at+jwt', 'typ');
    assert(at.sub === 'alice' && at.aud === 'urn:portcullis:api' && at.client_id === CLIENT_ID && at.iss === issuer, `at claims ${JSON.stringify(at)}`);
    assert(at.scope === 'api.read', `at scope ${at.scope}`);
    const keys = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
    const { payload: id } = await jose.jwtVerify(tokens.id_token, keys, { issuer, audience: CLIENT_ID });
    assert(id.nonce === cb.nonce, 'nonce');
    assert(id.name === 'Alice Smith' && id.email === 'alice@example.com' && id.sid, `id_token claims ${JSON.stringify(id)}`);
  });

  await step('api: /whoami verifies the access token', async () => {
    const r = await json(`${apiBase}/whoami`, { headers: { authorization: `Bearer ${tokens.access_token}`, 'x-test': '1' } });
    assert(r.status === 200 && r.body.sub === 'alice' && r.body.client_id === CLIENT_ID && r.body.received_headers['x-test'] === '1', JSON.stringify(r.body));
    assert(!('authorization' in r.body.received_headers), 'authorization echoed');
    const bad = await json(`${apiBase}/whoami`, { headers: { authorization: `Bearer ${tokens.access_token.slice(0, -3)}AAA` } });
    assert(bad.status === 401 && bad.body.error, 'tampered token accepted');
    const none = await json(`${apiBase}/whoami`);
    assert(none.status === 401, 'no token accepted');
  });

  await step('api: echo, status, upload, sse, stats', async () => {
    const e = await json(`${apiBase}/echo/a/b?x=1&x=2`, { method: 'POST', body: 'hello', headers: { authorization: 'Bearer t' } });
    assert(e.body.method === 'POST' && e.body.path === '/echo/a/b' && e.body.query === 'x=1&x=2' && e.body.body === 'hello' && e.body.headers.authorization === 'Bearer t', JSON.stringify(e.body));
    const s = await fetch(`${apiBase}/status/418`);
    assert(s.status === 418, 'status');
    const u = await json(`${apiBase}/upload`, { method: 'POST', body: 'abc' });
    assert(u.body.bytes === 3 && u.body.sha256 === crypto.createHash('sha256').update('abc').digest('hex'), 'upload');
    const t = await (await fetch(`${apiBase}/sse?count=3&interval_ms=10`)).text();
    assert(t === 'data: 0\n\ndata: 1\n\ndata: 2\n\n', JSON.stringify(t));
    const st = await json(`${apiBase}/stats`);
    assert(st.body.requests >= 8, 'stats');
  });

  await step('login: SSO (second authorization with IdP session asks no credentials)', async () => {
    const again = await login(issuer, jar, rp);
    const r = await exchange(issuer, again);
    assert(r.status === 200, 'exchange');
  });

  await step('token: code reuse -> invalid_grant and revokes the tokens of that grant', async () => {
    // separate browser (IdP session): one grant per IdP session and client, and replaying a
    // code revokes the whole grant
    const other = await login(issuer, new Jar(), rp);
    const r = await exchange(issuer, other);
    assert(r.status === 200, 'exchange');
    const reuse = await exchange(issuer, other);
    assert(reuse.status === 400 && reuse.body.error === 'invalid_grant', 'code reuse must fail');
    const rt = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: r.body.refresh_token });
    assert(rt.status === 400 && rt.body.error === 'invalid_grant', 'tokens of a replayed code must be revoked');
  });

  await step('token: refresh without rotation keeps the refresh token usable', async () => {
    for (let i = 0; i < 2; i += 1) {
      const r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
      assert(r.status === 200, `refresh ${i}: ${r.status} ${JSON.stringify(r.body)}`);
      assert(r.body.refresh_token === tokens.refresh_token, 'refresh token rotated unexpectedly');
      assert(jose.decodeJwt(r.body.access_token).aud === 'urn:portcullis:api', 'refreshed AT not a JWT for the default resource');
      assert(r.body.id_token, 'no id_token on refresh');
    }
    const { body } = await json(`${issuer}/__test/refresh-tokens?sub=alice`);
    assert(body.active >= 1, `active ${body.active}`);
  });

  await step('token: client_credentials gives a JWT access token', async () => {
    const r = await tokenRequest(issuer, { grant_type: 'client_credentials', scope: 'api.read' });
    assert(r.status === 200, JSON.stringify(r.body));
    const at = jose.decodeJwt(r.body.access_token);
    assert(at.aud === 'urn:portcullis:api' && at.scope === 'api.read' && at.client_id === CLIENT_ID && at.sub === CLIENT_ID, JSON.stringify(at));
    const api2 = await json(`${apiBase}/whoami`, { headers: { authorization: `Bearer ${r.body.access_token}` } });
    assert(api2.status === 200 && api2.body.sub === CLIENT_ID, 'api rejects cc token');
    const r2 = await tokenRequest(issuer, { grant_type: 'client_credentials', resource: 'urn:portcullis:other', scope: 'api.write' });
    assert(r2.status === 200 && jose.decodeJwt(r2.body.access_token).aud === 'urn:portcullis:other', 'resource parameter');
    const r3 = await tokenRequest(issuer, { grant_type: 'client_credentials', resource: 'https://elsewhere.example' });
    assert(r3.status === 400 && r3.body.error === 'invalid_target', 'unknown resource accepted');
  });

  await step('introspection', async () => {
    const r = await req(null, `${issuer}/token/introspection`, { method: 'POST', form: { token: tokens.refresh_token }, headers: { authorization: basic } });
    const body = JSON.parse(r.text);
    assert(r.status === 200 && body.active === true && body.sub === 'alice', r.text);
  });

  await step('/__test/stats counts token requests by grant type and errors', async () => {
    const { body } = await json(`${issuer}/__test/stats`);
    assert(body.token_requests.authorization_code === 4 && body.token_requests.refresh_token === 3, JSON.stringify(body));
    assert(body.token_requests.client_credentials === 3 && body.client_credentials_by_scope['api.read'] === 1, JSON.stringify(body));
    assert(body.token_errors.invalid_grant === 2 && body.token_errors.invalid_target === 1, JSON.stringify(body));
    await json(`${issuer}/__test/reset`, { method: 'POST' });
    const { body: zero } = await json(`${issuer}/__test/stats`);
    assert(Object.keys(zero.token_requests).length === 0 && zero.revocations === 0, 'reset');
  });

  const TE = 'urn:ietf:params:oauth:grant-type:token-exchange';
  const AT_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
  const teForm = (extra) => ({
    grant_type: TE, subject_token: tokens.access_token, subject_token_type: AT_TYPE, ...extra,
  });
  await step('token exchange (RFC 8693): user access token -> JWT access token the API accepts', async () => {
    await json(`${issuer}/__test/reset`, { method: 'POST' });
    assert(discovery.grant_types_supported.includes(TE), 'grant_types_supported');
    const keys = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
    const r = await tokenRequest(issuer, teForm({ audience: 'urn:portcullis:api', scope: 'api.read api.write', requested_token_type: AT_TYPE }));
    assert(r.status === 200, `${r.status} ${JSON.stringify(r.body)}`);
    assert(JSON.stringify(Object.keys(r.body).sort()) === '["access_token","expires_in","issued_token_type","scope","token_type"]', JSON.stringify(r.body));
    assert(r.body.issued_token_type === AT_TYPE && r.body.token_type === 'Bearer' && r.body.expires_in === 300 && r.body.scope === 'api.read api.write', JSON.stringify(r.body));
    const { payload: at, protectedHeader } = await jose.jwtVerify(r.body.access_token, keys, { issuer, audience: 'urn:portcullis:api' });
    const subject = jose.decodeJwt(tokens.access_token);
    if (process.env.SELFTEST_VERBOSE) process.stderr.write(`exchanged: ${JSON.stringify(protectedHeader)} ${JSON.stringify(at)}\n`);
    assert(protectedHeader.typ === 'at+jwt' && protectedHeader.alg === 'RS256' && protectedHeader.kid === jose.decodeProtectedHeader(tokens.access_token).kid, JSON.stringify(protectedHeader));
    assert(at.sub === 'alice' && at.client_id === CLIENT_ID && at.act?.sub === CLIENT_ID && at.scope === 'api.read api.write', JSON.stringify(at));
    assert(at.jti && at.jti !== subject.jti && at.exp - at.iat === 300, JSON.stringify(at));
    const api2 = await json(`${apiBase}/whoami`, { headers: { authorization: `Bearer ${r.body.access_token}` } });
    assert(api2.status === 200 && api2.body.sub === 'alice' && api2.body.token_jti === at.jti, JSON.stringify(api2.body));
    // defaults: audience urn:portcullis:exchanged (so the API refuses it), the subject's scope
    const d = await tokenRequest(issuer, teForm({}));
    const dat = jose.decodeJwt(d.body.access_token);
    assert(d.status === 200 && dat.aud === 'urn:portcullis:exchanged' && dat.scope === subject.scope && d.body.scope === subject.scope, JSON.stringify(dat));
    const refused = await json(`${apiBase}/whoami`, { headers: { authorization: `Bearer ${d.body.access_token}` } });
    assert(refused.status === 401, 'API accepted a token for another audience');
    const res = await tokenRequest(issuer, teForm({ resource: 'urn:portcullis:other' }));
    assert(res.status === 200 && jose.decodeJwt(res.body.access_token).aud === 'urn:portcullis:other', 'resource -> aud');
    // an exchanged token can be exchanged again: act nests
    const again = await tokenRequest(issuer, teForm({ subject_token: r.body.access_token, audience: 'urn:portcullis:api' }));
    const aat = jose.decodeJwt(again.body.access_token);
    assert(again.status === 200 && aat.sub === 'alice' && aat.act.sub === CLIENT_ID && aat.act.act.sub === CLIENT_ID, JSON.stringify(aat));
  });

  await step('token exchange: bad subject token -> invalid_grant, bad client secret -> invalid_client', async () => {
    const sign = async (claims, header = { typ: 'at+jwt' }, alg = 'RS256') => (await json(`${issuer}/__test/sign`, { method: 'POST', body: JSON.stringify({ claims, header, alg }) })).body.jwt;
    const now = Math.floor(Date.now() / 1000);
    const good = { iss: issuer, sub: 'alice', aud: 'urn:portcullis:api', iat: now, exp: now + 60 };
    const signed = await sign(good);
    assert((await tokenRequest(issuer, teForm({ subject_token: signed }))).status === 200, '/__test/sign token with at+jwt refused');
    const bad = {
      tampered: `${tokens.access_token.slice(0, -3)}AAA`,
      'id token': tokens.id_token,
      'not a jwt': 'opaque-garbage',
      expired: await sign({ ...good, iat: now - 120, exp: now - 60 }),
      'foreign iss': await sign({ ...good, iss: 'http://evil.example' }),
      'no typ': await sign(good, {}),
      'HS256 key confusion': await sign(good, { typ: 'at+jwt' }, 'HS256'),
      'alg none': await sign(good, { typ: 'at+jwt' }, 'none'),
    };
    for (const [what, token] of Object.entries(bad)) {
      const r = await tokenRequest(issuer, teForm({ subject_token: token }));
      assert(r.status === 400 && r.body.error === 'invalid_grant', `${what}: ${r.status} ${JSON.stringify(r.body)}`);
    }
    const wrongType = await tokenRequest(issuer, teForm({ subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' }));
    assert(wrongType.status === 400 && wrongType.body.error === 'invalid_grant', `subject_token_type: ${JSON.stringify(wrongType.body)}`);
    const noSubject = await tokenRequest(issuer, { grant_type: TE, subject_token_type: AT_TYPE });
    assert(noSubject.status === 400 && noSubject.body.error === 'invalid_request', `missing subject_token: ${JSON.stringify(noSubject.body)}`);
    const wrongSecret = await req(null, `${issuer}/token`, {
      method: 'POST', form: teForm({}), headers: { authorization: `Basic ${Buffer.from(`${CLIENT_ID}:wrong`).toString('base64')}` },
    });
    assert(wrongSecret.status === 401 && JSON.parse(wrongSecret.text).error === 'invalid_client', `wrong secret: ${wrongSecret.status} ${wrongSecret.text}`);
    const noAuth = await req(null, `${issuer}/token`, { method: 'POST', form: { ...teForm({}), client_id: CLIENT_ID } });
    assert(noAuth.status === 401 && JSON.parse(noAuth.text).error === 'invalid_client', `no client auth: ${noAuth.status} ${noAuth.text}`);
    const { body } = await json(`${issuer}/__test/stats`);
    const n = body.token_requests[TE]; // 4 in the previous step, 1 + bad + 4 here
    assert(n === 4 + 1 + Object.keys(bad).length + 4, `stats ${JSON.stringify(body)}`);
    assert(body.token_errors.invalid_grant === Object.keys(bad).length + 1 && body.token_errors.invalid_client === 2 && body.token_errors.invalid_request === 1, JSON.stringify(body));
  });

  await step('token exchange: added to every configured client unless "token_exchange": false', async () => {
    const secret = 'another-secret-for-tests-0123456789';
    const te = await start('testing/idp/server.mjs', ['--port', '0', '--quiet', '--config', config({
      clients: [
        { client_id: 'cc', client_secret: secret, grant_types: ['client_credentials'], scope: 'api.read' },
        { client_id: 'no-te', client_secret: secret, grant_types: ['client_credentials', TE], token_exchange: false },
      ],
    })]);
    const iss3 = te.info.issuer;
    const as = (id, form) => req(null, `${iss3}/token`, { method: 'POST', form, headers: { authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}` } });
    const cc = JSON.parse((await as('cc', { grant_type: 'client_credentials', scope: 'api.read' })).text);
    const form = { grant_type: TE, subject_token: cc.access_token, subject_token_type: AT_TYPE };
    const yes = await as('cc', form);
    assert(yes.status === 200 && jose.decodeJwt(JSON.parse(yes.text).access_token).sub === 'cc', `cc: ${yes.status} ${yes.text}`);
    const no = await as('no-te', form);
    assert(no.status === 400 && JSON.parse(no.text).error === 'invalid_request', `no-te: ${no.status} ${no.text}`);
    await stop(te.child);
  });

  await step('restart with state_file: refresh token, keys and IdP session survive', async () => {
    const before = await json(discovery.jwks_uri);
    await stop(idp.child);
    idp = await start('testing/idp/server.mjs', ['--port', String(port), '--config', persistentConfig]);
    const after = await json(discovery.jwks_uri);
    assert(JSON.stringify(before.body) === JSON.stringify(after.body), 'keys changed');
    const r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    assert(r.status === 200, `refresh after restart: ${JSON.stringify(r.body)}`);
    const sso = await login(issuer, jar, rp);
    assert(sso.code, 'SSO after restart');
  });

  await step('/__test/token-endpoint-fault and -delay', async () => {
    await json(`${issuer}/__test/reset`, { method: 'POST' });
    await json(`${issuer}/__test/token-endpoint-fault`, { method: 'POST', body: JSON.stringify({ status: 503, count: 2 }) });
    for (let i = 0; i < 2; i += 1) {
      const r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
      assert(r.status === 503 && r.body.error === 'temporarily_unavailable', `fault ${i}: ${r.status}`);
    }
    const r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    assert(r.status === 200, 'fault did not clear after count');
    await json(`${issuer}/__test/token-endpoint-fault`, { method: 'POST', body: JSON.stringify({ status: 500, count: -1 }) });
    assert((await tokenRequest(issuer, { grant_type: 'client_credentials' })).status === 500, 'count -1');
    await json(`${issuer}/__test/token-endpoint-fault`, { method: 'POST', body: JSON.stringify({ status: 0 }) });
    assert((await tokenRequest(issuer, { grant_type: 'client_credentials' })).status === 200, 'clear');
    await json(`${issuer}/__test/token-endpoint-delay`, { method: 'POST', body: JSON.stringify({ ms: 600 }) });
    const t0 = Date.now();
    await tokenRequest(issuer, { grant_type: 'client_credentials' });
    assert(Date.now() - t0 >= 550, 'delay');
    await json(`${issuer}/__test/token-endpoint-delay`, { method: 'POST', body: JSON.stringify({ ms: 0 }) });
    const { body } = await json(`${issuer}/__test/stats`);
    assert(body.token_requests.refresh_token === 3 && body.token_requests.client_credentials === 3 && body.token_errors.temporarily_unavailable === 3, JSON.stringify(body));
  });

  await step('/__test/tamper-next-id-token and wrong-iss-next-id-token', async () => {
    const keys = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
    await json(`${issuer}/__test/tamper-next-id-token`, { method: 'POST' });
    let r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    let failed = false;
    try { await jose.jwtVerify(r.body.id_token, keys); } catch { failed = true; }
    assert(failed, 'tampered id_token verified');
    await json(`${issuer}/__test/wrong-iss-next-id-token`, { method: 'POST' });
    r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    const { payload } = await jose.jwtVerify(r.body.id_token, keys);
    assert(payload.iss === 'http://evil.example', 'iss');
    r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    await jose.jwtVerify(r.body.id_token, keys, { issuer });
  });

  await step('/__test/refresh-without-id-token and /__test/token-type', async () => {
    await json(`${issuer}/__test/refresh-without-id-token`, { method: 'POST', body: JSON.stringify({ enabled: true }) });
    await json(`${issuer}/__test/token-type`, { method: 'POST', body: JSON.stringify({ value: 'bearer' }) });
    let r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    assert(r.status === 200 && !('id_token' in r.body) && r.body.token_type === 'bearer', JSON.stringify(Object.keys(r.body)));
    await json(`${issuer}/__test/refresh-without-id-token`, { method: 'POST', body: JSON.stringify({ enabled: false }) });
    await json(`${issuer}/__test/token-type`, { method: 'POST', body: JSON.stringify({ value: null }) });
    r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    assert(r.status === 200 && r.body.id_token && r.body.token_type === 'Bearer', 'not cleared');
  });

  await step('/__test/sign', async () => {
    const keys = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
    for (const alg of ['RS256', 'ES256']) {
      const { body } = await json(`${issuer}/__test/sign`, { method: 'POST', body: JSON.stringify({ claims: { a: 1 }, header: { typ: 'logout+jwt' }, alg }) });
      const { payload, protectedHeader } = await jose.jwtVerify(body.jwt, keys);
      assert(payload.a === 1 && protectedHeader.typ === 'logout+jwt' && protectedHeader.alg === alg, alg);
    }
    const { body } = await json(`${issuer}/__test/sign`, { method: 'POST', body: JSON.stringify({ claims: { a: 1 }, alg: 'none' }) });
    assert(body.jwt.endsWith('.') && jose.decodeProtectedHeader(body.jwt).alg === 'none', 'alg none');
  });

  await step('revocation (RFC 7009) of the refresh token', async () => {
    const r = await req(null, `${issuer}/token/revocation`, {
      method: 'POST', form: { token: tokens.refresh_token, token_type_hint: 'refresh_token' }, headers: { authorization: basic },
    });
    assert(r.status === 200, `revocation ${r.status}`);
    const after = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    assert(after.status === 400 && after.body.error === 'invalid_grant', 'revoked token still works');
    const { body } = await json(`${issuer}/__test/stats`);
    assert(body.revocations === 1, 'revocation count');
  });

  await step('RP-initiated logout via plain HTTP form POST', async () => {
    const cbx = await login(issuer, jar, rp); // SSO, no credentials
    const t = (await exchange(issuer, cbx)).body;
    const endSession = new URL(discovery.end_session_endpoint);
    endSession.search = new URLSearchParams({
      id_token_hint: t.id_token, post_logout_redirect_uri: `${rp}/signout-callback-oidc`, state: 'st1',
    });
    backchannel.length = 0;
    const { body: before } = await json(`${issuer}/__test/sessions?sub=alice`);
    const page = await req(jar, endSession.href);
    assert(page.status === 200, `GET end_session ${page.status}`);
    const action = /<form[^>]*method="post"[^>]*action="([^"]+)"/.exec(page.text)?.[1];
    assert(action, 'no form');
    const fields = Object.fromEntries([...page.text.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"\/?>/g)].map((m) => [m[1], m[2]]));
    assert(fields.xsrf && fields.logout === 'yes', JSON.stringify(fields));
    const r = await req(jar, new URL(action, issuer).href, { method: 'POST', form: fields });
    assert(r.status === 303 && r.location === `${rp}/signout-callback-oidc?state=st1`, `POST ${r.status} ${r.location}`);
    assert(backchannel.length === 1, `back-channel tokens sent: ${backchannel.length}`);
    const lt = jose.decodeJwt(backchannel[0]);
    if (process.env.SELFTEST_VERBOSE) process.stderr.write(`logout token from end-session: ${JSON.stringify(lt)}\n`);
    assert(lt.sub === 'alice' && lt.sid && lt.events['http://schemas.openid.net/event/backchannel-logout'] && !lt.nonce, JSON.stringify(lt));
    assert(jose.decodeProtectedHeader(backchannel[0]).typ === 'logout+jwt', 'typ');
    const { body } = await json(`${issuer}/__test/stats`);
    assert(body.end_sessions === 1, 'end_sessions');
    const { body: s } = await json(`${issuer}/__test/sessions?sub=alice`);
    assert(s.active === before.active - 1, `IdP sessions ${before.active} -> ${s.active}`);
    // the next authorization asks for credentials again
    const auth = await req(jar, `${issuer}/auth?${new URLSearchParams({
      client_id: CLIENT_ID, response_type: 'code', scope: 'openid', redirect_uri: `${rp}/signin-oidc`, state: 's', code_challenge: 'x'.repeat(43), code_challenge_method: 'S256',
    })}`);
    assert(auth.location.startsWith('/interaction/'), 'still logged in at the IdP');
  });

  await step('RP-initiated logout without IdP session still completes', async () => {
    const endSession = new URL(discovery.end_session_endpoint);
    endSession.search = new URLSearchParams({ client_id: CLIENT_ID, post_logout_redirect_uri: `${rp}/signout-callback-oidc` });
    const j = new Jar();
    const page = await req(j, endSession.href);
    const action = /<form[^>]*method="post"[^>]*action="([^"]+)"/.exec(page.text)?.[1];
    const fields = Object.fromEntries([...page.text.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"\/?>/g)].map((m) => [m[1], m[2]]));
    const r = await req(j, new URL(action, issuer).href, { method: 'POST', form: fields });
    assert(r.status === 303 && r.location === `${rp}/signout-callback-oidc`, `${r.status} ${r.location}`);
  });

  await step('/__test/backchannel-logout', async () => {
    const j = new Jar();
    const c = await login(issuer, j, rp, { user: 'bob', password: 'bob' });
    const t = (await exchange(issuer, c)).body;
    const sid = jose.decodeJwt(t.id_token).sid;
    backchannel.length = 0;
    const { body } = await json(`${issuer}/__test/backchannel-logout`, { method: 'POST', body: JSON.stringify({ sub: 'bob' }) });
    assert(body.sent.length === 1 && body.sent[0].status === 200 && body.sent[0].client_id === CLIENT_ID, JSON.stringify(body));
    const keys = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
    const { payload, protectedHeader } = await jose.jwtVerify(backchannel[0], keys, { issuer, audience: CLIENT_ID });
    assert(payload.sub === 'bob' && payload.sid === sid && payload.jti && protectedHeader.typ === 'logout+jwt', JSON.stringify(payload));
    const { body: s } = await json(`${issuer}/__test/sessions?sub=bob`);
    assert(s.active === 0, 'bob still has an IdP session');
  });

  await step('/__test/issued lists every code and token handed out, opaque ones included', async () => {
    // (a fresh login: the restart step above zeroed the in-memory list)
    const c = await login(issuer, new Jar(), rp);
    const t = (await exchange(issuer, c)).body;
    const { status, body } = await json(`${issuer}/__test/issued`);
    assert(status === 200, `status ${status}`);
    assert(body.authorization_codes.includes(c.code), 'the login code is missing');
    assert(!c.code.startsWith('eyJ') && !t.refresh_token.startsWith('eyJ'), 'codes and refresh tokens are opaque here');
    assert(body.access_tokens.includes(t.access_token), 'the access token is missing');
    assert(body.refresh_tokens.includes(t.refresh_token), 'the refresh token is missing');
    assert(body.id_tokens.includes(t.id_token), 'the ID token is missing');
    assert(body.logout_tokens.includes(backchannel[0]), 'the back-channel logout token is missing');
  });

  await step('refresh token rotation: reuse of a consumed token -> invalid_grant', async () => {
    const rot = await start('testing/idp/server.mjs', ['--port', '0', '--config', config({ rotate_refresh_token: true })]);
    const iss2 = rot.info.issuer;
    const c = await login(iss2, new Jar(), rp);
    const t = (await exchange(iss2, c)).body;
    const r1 = await tokenRequest(iss2, { grant_type: 'refresh_token', refresh_token: t.refresh_token });
    assert(r1.status === 200 && r1.body.refresh_token && r1.body.refresh_token !== t.refresh_token, 'not rotated');
    const reuse = await tokenRequest(iss2, { grant_type: 'refresh_token', refresh_token: t.refresh_token });
    assert(reuse.status === 400 && reuse.body.error === 'invalid_grant', `reuse: ${JSON.stringify(reuse.body)}`);
    const { body } = await json(`${iss2}/__test/stats`);
    assert(body.token_errors.invalid_grant === 1 && body.token_requests.refresh_token === 2, JSON.stringify(body));
    await stop(rot.child);
  });

  clearTimeout(deadline);
  process.stdout.write(`${passed} passed, 0 failed\n`);
  cleanup();
  process.exit(0);
}

main().catch((err) => fail('selftest', err?.stack ?? err));
