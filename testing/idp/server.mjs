#!/usr/bin/env node
// Test and demo identity provider for Portcullis: a real `oidc-provider` instance with
// minimal login pages, automatic consent, JWT access tokens, optional on-disk state and a
// set of loopback-only `/__test/*` control endpoints for the gateway's integration tests.
//
//   node testing/idp/server.mjs --port <P> [--config <file.json>] [--issuer-host 127.0.0.1]
//                               [--quiet]
//
// --issuer-host localhost makes the issuer http://localhost:<port> (still listening on
// 127.0.0.1 only), so that the IdP is cross-site to a gateway on 127.0.0.1 for SameSite tests.
// --quiet drops the per-request log lines (errors are still logged).
//
// Prints exactly one line to stdout once listening:
//   READY {"issuer":"http://127.0.0.1:<port>","port":<port>}
// Everything else (request log, errors) goes to stderr.
//
// Deliberate deviations from a production IdP, all for tests:
// - consent is granted automatically (the grant is created or extended with everything the
//   client asked for), so a login is: form POST -> redirects -> redirect_uri;
// - refresh tokens are issued to every client allowed the `refresh_token` grant, whether or
//   not `offline_access` survived oidc-provider's "offline_access needs prompt=consent" rule,
//   and they do not expire with the IdP session;
// - the ID token carries the profile/email claims (no userinfo round trip needed), because
//   access tokens are JWTs for the API resource and cannot be used at the userinfo endpoint;
// - `/__test/*` is unauthenticated (the server only listens on 127.0.0.1);
// - an RFC 8693 token-exchange grant (access token in, JWT access token out) is added to
//   every confidential client, with no policy beyond "the subject token is ours and valid";
// - with `acr_values` configured, the login form lets the user (a test) pick the `acr` the
//   login yields (form field `acr`; default: the first configured value), and a request whose
//   `acr_values` the IdP session does not meet asks for a new login (step-up).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import Provider, { errors, interactionPolicy } from 'oidc-provider';
import * as jose from 'jose';

const DEFAULT_RESOURCE = 'urn:portcullis:api';
const RESOURCE_SCOPE = 'api api.read api.write';
// OpenID scopes; the API scopes belong to the resource server (see getResourceServerInfo).
const OIDC_SCOPES = ['openid', 'offline_access', 'profile', 'email'];
const BACKCHANNEL_EVENT = 'http://schemas.openid.net/event/backchannel-logout';
// RFC 8693 token exchange
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TOKEN_TYPE_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const EXCHANGE_DEFAULT_AUDIENCE = 'urn:portcullis:exchanged';
const EXCHANGE_PARAMS = [
  'subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope',
  'actor_token', 'actor_token_type',
];

function log(...parts) {
  process.stderr.write(`[idp] ${parts.join(' ')}\n`);
}

// ---------------------------------------------------------------------------------------
// Command line and configuration

function parseCli() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      config: { type: 'string' },
      'issuer-host': { type: 'string', default: '127.0.0.1' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write('usage: node testing/idp/server.mjs --port <P> [--config <file.json>] [--issuer-host 127.0.0.1|localhost] [--quiet]\n');
    process.exit(0);
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`invalid --port ${values.port}`);
  }
  if (!['127.0.0.1', 'localhost'].includes(values['issuer-host'])) {
    throw new Error('--issuer-host must be 127.0.0.1 or localhost');
  }
  let config = {};
  if (values.config) {
    config = JSON.parse(fs.readFileSync(values.config, 'utf8'));
  }
  return {
    port, config, issuerHost: values['issuer-host'], quiet: values.quiet,
  };
}

const DEFAULT_CLIENT = {
  client_id: 'spa-bff',
  client_secret: 'secret-for-tests-only-0123456789',
  redirect_uris: ['http://127.0.0.1:8080/signin-oidc'],
  post_logout_redirect_uris: ['http://127.0.0.1:8080/signout-callback-oidc'],
  backchannel_logout_uri: 'http://127.0.0.1:8080/bff/backchannel',
  backchannel_logout_session_required: true,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials', TOKEN_EXCHANGE],
  scope: 'openid profile email offline_access api api.read api.write',
};

const DEFAULT_USERS = {
  alice: {
    password: 'alice',
    claims: {
      name: 'Alice Smith',
      given_name: 'Alice',
      family_name: 'Smith',
      email: 'alice@example.com',
      email_verified: true,
    },
  },
  bob: {
    password: 'bob',
    claims: {
      name: 'Bob Jones',
      given_name: 'Bob',
      family_name: 'Jones',
      email: 'bob@example.com',
      email_verified: true,
    },
  },
};

function normalizeConfig(raw) {
  const num = (v, d) => (Number.isFinite(v) && v > 0 ? v : d);
  const clients = (Array.isArray(raw.clients) && raw.clients.length ? raw.clients : [DEFAULT_CLIENT])
    .map(({ token_exchange: tokenExchange, ...c }) => {
      let grantTypes = [...(c.grant_types ?? DEFAULT_CLIENT.grant_types)];
      // Token exchange is added to every client that authenticates at the token endpoint
      // (test configs list grant_types explicitly and predate it); "token_exchange": false
      // removes it, even when grant_types lists it.
      if (tokenExchange === false) {
        grantTypes = grantTypes.filter((g) => g !== TOKEN_EXCHANGE);
      } else if ((c.token_endpoint_auth_method ?? 'client_secret_basic') !== 'none' && !grantTypes.includes(TOKEN_EXCHANGE)) {
        grantTypes.push(TOKEN_EXCHANGE);
      }
      // oidc-provider only accepts its own (OpenID) scopes in client metadata; resource
      // scopes such as api.read are allowed by the resource server instead. A client that
      // lists none (e.g. "scope": "api.read") gets no `scope` metadata (an empty one is invalid).
      const scope = String(c.scope ?? DEFAULT_CLIENT.scope).split(' ')
        .filter((s) => OIDC_SCOPES.includes(s)).join(' ');
      const rest = { ...c };
      delete rest.scope;
      return {
        token_endpoint_auth_method: 'client_secret_basic',
        ...rest,
        ...(scope ? { scope } : {}),
        grant_types: grantTypes,
        // client_credentials-only clients have no front channel at all
        response_types: c.response_types ?? (grantTypes.includes('authorization_code') ? ['code'] : []),
        redirect_uris: c.redirect_uris ?? [],
      };
    });
  return {
    clients,
    users: { ...DEFAULT_USERS, ...(raw.users ?? {}) },
    accessTokenTtl: num(raw.access_token_ttl, 300),
    idTokenTtl: num(raw.id_token_ttl, 300),
    refreshTokenTtl: num(raw.refresh_token_ttl, 14 * 24 * 3600),
    sessionTtl: num(raw.session_ttl, 24 * 3600),
    rotateRefreshToken: raw.rotate_refresh_token === true,
    stateFile: typeof raw.state_file === 'string' && raw.state_file ? raw.state_file : undefined,
    // RFC 9449 DPoP: off unless the config has a `dpop` object; `require_nonce` makes every
    // DPoP token request carry a server nonce (features.dPoP.nonceSecret).
    dpop: raw.dpop && typeof raw.dpop === 'object' ? { requireNonce: raw.dpop.require_nonce === true } : undefined,
    // client_ids that get oidc-provider's FAPI 2.0 profile (features.fapi).
    fapi2Clients: Array.isArray(raw.fapi2_clients) ? raw.fapi2_clients : [],
    // Step-up: the acr values the IdP can deliver (oidc-provider `acrValues`, advertised as
    // acr_values_supported); the first is what a plain password login yields.
    acrValues: Array.isArray(raw.acr_values) ? raw.acr_values.filter((v) => typeof v === 'string') : [],
    // Extra user claims (from `users.<name>.claims`) released with the `profile` scope.
    profileClaims: Array.isArray(raw.profile_claims) ? raw.profile_claims.filter((v) => typeof v === 'string') : [],
  };
}

// ---------------------------------------------------------------------------------------
// State: models (sessions, grants, tokens, ...) and keys, optionally mirrored to a JSON file

class StateStore {
  constructor(file) {
    this.file = file;
    this.models = new Map(); // model name -> Map(id -> { payload, exp (ms epoch) | null })
    this.keys = undefined; // { keys: [private JWKs] }
    this.cookieKeys = undefined;
    if (file && fs.existsSync(file)) {
      const data = JSON.parse(fs.readFileSync(file, 'utf8'));
      this.keys = data.keys;
      this.cookieKeys = data.cookieKeys;
      for (const [name, entries] of Object.entries(data.models ?? {})) {
        this.models.set(name, new Map(Object.entries(entries)));
      }
    }
  }

  table(name) {
    let t = this.models.get(name);
    if (!t) {
      t = new Map();
      this.models.set(name, t);
    }
    return t;
  }

  static live(entry, now = Date.now()) {
    return entry && (entry.exp === null || entry.exp > now);
  }

  persist() {
    if (!this.file) return;
    const now = Date.now();
    const models = {};
    for (const [name, t] of this.models) {
      for (const [id, entry] of t) {
        if (!StateStore.live(entry, now)) t.delete(id);
      }
      models[name] = Object.fromEntries(t);
    }
    const body = JSON.stringify({
      version: 1, keys: this.keys, cookieKeys: this.cookieKeys, models,
    });
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, body, { mode: 0o600 });
    fs.renameSync(tmp, this.file);
  }

  adapterClass() {
    const store = this;
    const grantable = new Set([
      'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
      'BackchannelAuthenticationRequest', 'ClientCredentials', 'PreAuthorizedCode',
    ]);
    return class StateAdapter {
      constructor(name) {
        this.name = name;
      }

      get t() {
        return store.table(this.name);
      }

      async upsert(id, payload, expiresIn) {
        store.onUpsert?.(this.name, id);
        const exp = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : null;
        this.t.set(id, { payload: structuredClone(payload), exp });
        store.persist();
      }

      async find(id) {
        const entry = this.t.get(id);
        if (!StateStore.live(entry)) return undefined;
        return structuredClone(entry.payload);
      }

      async findByUid(uid) {
        for (const entry of this.t.values()) {
          if (entry.payload.uid === uid && StateStore.live(entry)) return structuredClone(entry.payload);
        }
        return undefined;
      }

      async findByUserCode(userCode) {
        for (const entry of this.t.values()) {
          if (entry.payload.userCode === userCode && StateStore.live(entry)) {
            return structuredClone(entry.payload);
          }
        }
        return undefined;
      }

      async consume(id) {
        const entry = this.t.get(id);
        if (entry) {
          entry.payload.consumed = Math.floor(Date.now() / 1000);
          store.persist();
        }
      }

      async destroy(id) {
        if (this.t.delete(id)) store.persist();
      }

      async revokeByGrantId(grantId) {
        let changed = false;
        for (const name of grantable) {
          const t = store.models.get(name);
          if (!t) continue;
          for (const [id, entry] of t) {
            if (entry.payload.grantId === grantId) {
              t.delete(id);
              changed = true;
            }
          }
        }
        if (changed) store.persist();
      }
    };
  }
}

async function ensureKeys(store) {
  if (!store.keys?.keys?.length) {
    const keys = [];
    for (const [alg, opts] of [['RS256', { modulusLength: 2048 }], ['ES256', {}]]) {
      const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, ...opts });
      const jwk = await jose.exportJWK(privateKey);
      jwk.kid = `${alg.toLowerCase()}-${(await jose.calculateJwkThumbprint(jwk)).slice(0, 12)}`;
      jwk.alg = alg;
      jwk.use = 'sig';
      keys.push(jwk);
    }
    store.keys = { keys };
  }
  if (!Array.isArray(store.cookieKeys) || !store.cookieKeys.length) {
    store.cookieKeys = [crypto.randomBytes(32).toString('base64url')];
  }
  store.persist();
}

// ---------------------------------------------------------------------------------------
// Small helpers

const html = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

async function readBody(ctx, limit = 1024 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readForm(ctx) {
  return Object.fromEntries(new URLSearchParams(await readBody(ctx)));
}

async function readJson(ctx) {
  const text = await readBody(ctx);
  if (!text.trim()) return {};
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' ? v : {};
  } catch {
    throw Object.assign(new Error('invalid JSON body'), { status: 400 });
  }
}

function page(title, body, extraHead = '') {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${html(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>body{font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem}
label{display:block;margin:.6rem 0}input{display:block;width:100%;padding:.4rem;box-sizing:border-box}
button{margin-top:1rem;padding:.5rem 1rem}.error{color:#b00020}</style>
${extraHead}
</head>
<body>
<h1>${html(title)}</h1>
${body}
</body>
</html>`;
}

function loginPage(uid, {
  error, login = '', clientId, acrValues = [], acr,
} = {}) {
  const acrSelect = acrValues.length ? `
  <label>Authentication level <select name="acr">${acrValues.map((v) => `<option${v === acr ? ' selected' : ''}>${html(v)}</option>`).join('')}</select></label>` : '';
  return page('Sign in', `
${clientId ? `<p>to continue to <strong>${html(clientId)}</strong></p>` : ''}
${error ? `<p class="error" id="error">${html(error)}</p>` : ''}
<form method="post" action="/interaction/${html(uid)}/login" autocomplete="off">
  <label>Username <input name="login" value="${html(login)}" autofocus required></label>
  <label>Password <input name="password" type="password" required></label>${acrSelect}
  <button type="submit">Sign in</button>
</form>
<p><a href="/interaction/${html(uid)}/abort">Cancel</a></p>`);
}

// The login prompt of oidc-provider's default policy, plus step-up: a request whose
// `acr_values` the IdP session's `acr` is not among asks for a new login (oidc-provider alone
// only does that for an essential `acr` in the `claims` parameter). A login just performed in
// this interaction ends it either way: the acr it yielded is what the user could do, and the
// relying party decides whether that suffices.
function stepUpPolicy() {
  const { Check, base } = interactionPolicy;
  const policy = base();
  policy.get('login').checks.add(new Check(
    'acr_values_not_met',
    'none of the requested acr_values is met by the current session',
    'login_required',
    (ctx) => {
      const { oidc } = ctx;
      const requested = String(oidc.params.acr_values ?? '').split(' ').filter(Boolean);
      if (!requested.length || !oidc.session.accountId || oidc.result?.login) {
        return Check.NO_NEED_TO_PROMPT;
      }
      return requested.includes(oidc.acr) ? Check.NO_NEED_TO_PROMPT : Check.REQUEST_PROMPT;
    },
  ));
  return policy;
}

// ---------------------------------------------------------------------------------------
// Main

async function main() {
  const cli = parseCli();
  const cfg = normalizeConfig(cli.config);
  const store = new StateStore(cfg.stateFile);
  await ensureKeys(store);

  // Listen first so that port 0 resolves before the issuer (which contains the port) is fixed.
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(cli.port, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const issuer = `http://${cli.issuerHost}:${port}`;

  const users = cfg.users;
  const privateKeys = store.keys.keys;

  const stats = {};
  const resetStats = () => Object.assign(stats, {
    token_requests: {},
    token_errors: {},
    revocations: 0,
    end_sessions: 0,
    client_credentials_by_scope: {},
    jwks_requests: 0,
    discovery_requests: 0,
    // RFC 8707 `resource` of each token request, per grant type ("" when absent; last 50)
    token_resources: {},
    // W3C `traceparent` of each token-endpoint POST ("" when absent; last 50)
    token_traceparents: [],
    // RFC 9449: token requests that carried a DPoP proof (grant, proof jkt, whether the proof
    // had a nonce, status, token_type answered; last 50)
    dpop_token_requests: [],
    // RFC 9126: pushed authorization requests (client_id, parameter names, status; last 50)
    par_requests: [],
  });
  resetStats();
  const faults = {
    tamperIdToken: 0,
    wrongIssIdToken: 0,
    tokenStatus: 0,
    tokenCount: 0,
    tokenBody: undefined, // raw body of the injected fault (undefined: the JSON error below)
    refreshIdTokenClaims: undefined, // claims to overwrite in the next refresh's id_token
    tokenDelayMs: 0,
    tokenDelayAfter: false, // delay the answer after the grant ran (tokens already issued)
    refreshWithoutIdToken: false,
    tokenType: undefined,
    // /__test/jwks-extra: public JWKs appended to the published JWKS (odd, unusable keys)
    jwksExtra: [],
    // /__test/rotate-keys: the RS256 signing key that replaced the original one (private JWK)
    rotatedRsa: undefined,
    // /__test/mutate-next-id-token: claims merged into the next `count` ID tokens
    idTokenClaims: undefined,
    idTokenClaimsCount: 0,
    // /__test/discovery-extra: members merged into the discovery document
    discoveryExtra: {},
  };
  const currentKey = (alg) => (alg === 'RS256' && faults.rotatedRsa
    ? faults.rotatedRsa
    : privateKeys.find((k) => k.alg === alg));

  // jose refuses to sign a `crit` it does not know unless told: the tests want such tokens.
  const critOptions = (header) => (Array.isArray(header?.crit)
    ? { crit: Object.fromEntries(header.crit.filter((c) => typeof c === 'string').map((c) => [c, true])) }
    : undefined);

  // Every secret value this IdP handed out, for leak checks (`GET /__test/issued`): opaque
  // values (codes, refresh tokens) are caught where they are stored, the rest where the token
  // endpoint answers. Bounded, as everything else in a test process.
  const issued = {
    authorization_codes: new Set(),
    access_tokens: new Set(),
    refresh_tokens: new Set(),
    id_tokens: new Set(),
    logout_tokens: new Set(),
  };
  const remember = (kind, value) => {
    if (typeof value === 'string' && value && issued[kind].size < 10_000) issued[kind].add(value);
  };
  store.onUpsert = (model, id) => {
    if (model === 'AuthorizationCode') remember('authorization_codes', id);
    if (model === 'RefreshToken') remember('refresh_tokens', id);
  };

  async function signJwt(claims, header = {}, alg = 'RS256') {
    if (alg === 'none') {
      const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
      return `${enc({ ...header, alg: 'none' })}.${enc(claims)}.`;
    }
    if (alg === 'HS256') {
      // The classic key-confusion attack: HMAC keyed with the RS256 public key (SPKI PEM).
      const jwk = privateKeys.find((k) => k.alg === 'RS256');
      const pub = crypto.createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
      return new jose.SignJWT(claims)
        .setProtectedHeader({ kid: jwk.kid, ...header, alg: 'HS256' })
        .sign(new TextEncoder().encode(pub));
    }
    const jwk = currentKey(alg);
    if (!jwk) throw Object.assign(new Error(`no key for alg ${alg}`), { status: 400 });
    const key = await jose.importJWK(jwk, alg);
    return new jose.SignJWT(claims).setProtectedHeader({ kid: jwk.kid, ...header, alg }).sign(key, critOptions(header));
  }

  async function resignIdToken(idToken, mutate) {
    const header = jose.decodeProtectedHeader(idToken);
    const payload = jose.decodeJwt(idToken);
    mutate(payload);
    const jwk = (faults.rotatedRsa && header.alg === 'RS256' ? faults.rotatedRsa : undefined)
      ?? privateKeys.find((k) => k.kid === header.kid) ?? privateKeys.find((k) => k.alg === header.alg);
    const key = await jose.importJWK(jwk, header.alg);
    const extraHeader = faults.idTokenHeader ?? {};
    return new jose.SignJWT(payload).setProtectedHeader({ ...header, ...extraHeader, kid: jwk.kid })
      .sign(key, critOptions(extraHeader));
  }

  function tamperSignature(jwt) {
    const [h, p, s] = jwt.split('.');
    const flip = (c) => (c === 'A' ? 'B' : 'A');
    // change the first and last-but-one characters: both sit in fully significant bits
    const t = flip(s[0]) + s.slice(1, -2) + flip(s[s.length - 2]) + s.slice(-1);
    return `${h}.${p}.${t}`;
  }

  let provider;

  async function autoGrant(ctx, existing) {
    const { oidc } = ctx;
    const grant = existing ?? new provider.Grant({
      accountId: oidc.session.accountId ?? oidc.account?.accountId,
      clientId: oidc.client.clientId,
    });
    const oidcScopes = [...oidc.requestParamOIDCScopes];
    if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
    const claims = [...oidc.requestParamClaims];
    if (claims.length) grant.addOIDCClaims(claims);
    const requested = [...oidc.requestParamScopes];
    for (const [indicator, rs] of Object.entries(oidc.resourceServers ?? {})) {
      const scopes = requested.filter((s) => rs.scopes.has(s));
      grant.addResourceScope(indicator, scopes.length ? scopes.join(' ') : rs.scope);
    }
    await grant.save();
    return grant;
  }

  const configuration = {
    adapter: store.adapterClass(),
    clients: cfg.clients,
    jwks: store.keys,
    cookies: {
      // cookies ignore ports: keep the IdP's names apart from the gateway's on 127.0.0.1
      names: { session: 'idp_session', interaction: 'idp_interaction', resume: 'idp_interaction_resume' },
      keys: store.cookieKeys,
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    claims: {
      openid: ['sub'],
      profile: ['name', 'given_name', 'family_name'],
      email: ['email', 'email_verified'],
      acr: null,
      sid: null,
      auth_time: null,
      iss: null,
      ...(cfg.profileClaims.length ? { profile: ['name', 'given_name', 'family_name', ...cfg.profileClaims] } : {}),
      // With acr values, every ID token says how and when the user authenticated (as most
      // IdPs do), not only those whose request asked for acr_values or max_age.
      ...(cfg.acrValues.length ? { openid: ['sub', 'acr', 'amr', 'auth_time'] } : {}),
    },
    acrValues: cfg.acrValues,
    scopes: OIDC_SCOPES,
    responseTypes: ['code'],
    discovery: {
      claim_types_supported: ['normal'],
      // oidc-provider does not publish this one itself; the gateway checks `prompt` against it
      prompt_values_supported: ['none', 'login', 'consent'],
    },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: async () => true },
      revocation: {
        enabled: true,
        allowedPolicy: async (ctx, client, token) => {
          if (token.clientId !== client.clientId) {
            throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
          }
          return true;
        },
      },
      userinfo: { enabled: true },
      ...(cfg.dpop ? {
        dPoP: {
          enabled: true,
          nonceSecret: crypto.randomBytes(32),
          requireNonce: () => cfg.dpop.requireNonce,
        },
      } : {}),
      ...(cfg.fapi2Clients.length ? {
        fapi: {
          enabled: true,
          profile: (ctx, client) => (client && cfg.fapi2Clients.includes(client.clientId) ? '2.0' : undefined),
        },
      } : {}),
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          // `form` is oidc-provider's <form id="op.logoutForm" ...> with the hidden xsrf input.
          // Put logout=yes and a real submit button inside it so that a plain HTTP client can
          // post it as is; the inline script submits it in a browser.
          const withFields = form.replace(
            '</form>',
            '<input type="hidden" name="logout" value="yes"/><button type="submit">Yes, sign me out</button></form>',
          );
          ctx.type = 'html';
          ctx.body = page('Signing out', `<p>Signing you out...</p>\n${withFields}\n`
            + '<script>document.forms[0].submit()</script>');
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<p id="signed-out">You have been signed out.</p>');
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => {
          if (oneOf) return oneOf.includes(DEFAULT_RESOURCE) ? DEFAULT_RESOURCE : oneOf[0];
          return DEFAULT_RESOURCE;
        },
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          if (
            resourceIndicator.startsWith('urn:portcullis:')
            || resourceIndicator.startsWith('http://127.0.0.1')
            || resourceIndicator.startsWith('http://localhost')
          ) {
            return {
              scope: RESOURCE_SCOPE,
              audience: resourceIndicator,
              accessTokenFormat: 'jwt',
              accessTokenTTL: cfg.accessTokenTtl,
            };
          }
          throw new errors.InvalidTarget();
        },
      },
    },
    async findAccount(ctx, sub) {
      const user = users[sub];
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, ...user.claims };
        },
      };
    },
    async loadExistingGrant(ctx) {
      // Automatic consent: load the client's grant for this session (or create one) and add
      // everything the current request asks for.
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      const existing = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      return autoGrant(ctx, existing);
    },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    // RFC 7009 revocation of a refresh token revokes that token only (oidc-provider's default
    // revokes the whole grant, i.e. every token of that IdP session and client). Code or
    // rotated-refresh-token replay still revokes the grant.
    revokeGrantPolicy: (ctx) => ctx.oidc.route !== 'revocation',
    rotateRefreshToken: () => cfg.rotateRefreshToken,
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? cfg.accessTokenTtl,
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? cfg.accessTokenTtl,
      AuthorizationCode: 60,
      IdToken: cfg.idTokenTtl,
      RefreshToken: cfg.refreshTokenTtl,
      Interaction: 3600,
      Session: cfg.sessionTtl,
      Grant: cfg.refreshTokenTtl,
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
      policy: stepUpPolicy(),
    },
    // oidc-provider's outgoing requests (back-channel logout) refuse special-use addresses
    // such as 127.0.0.1 (SSRF protection); in this loopback-only test IdP they are the point.
    fetch: (url, options) => {
      const { dispatcher, ...rest } = options;
      if (rest.body !== undefined) {
        remember('logout_tokens', new URLSearchParams(String(rest.body)).get('logout_token') ?? undefined);
      }
      return globalThis.fetch(url, rest);
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([k, v]) => `<p><strong>${html(k)}</strong>: <span class="${html(k)}">${html(v)}</span></p>`).join('\n'));
    },
  };

  provider = new Provider(issuer, configuration);

  // ---- RFC 8693 token exchange. oidc-provider runs client authentication and the
  // per-client grant_types check before this handler; the token is signed here directly
  // (same key, alg and `typ` as oidc-provider's JWT access tokens), not via its models, so
  // it is neither stored nor introspectable nor revocable.
  const publicJwks = {
    keys: privateKeys.map(({
      d, p, q, dp, dq, qi, ...pub
    }) => pub),
  };
  const localKeys = jose.createLocalJWKSet(publicJwks);
  const verifyOwnAccessToken = async (token, what) => {
    try {
      const { payload } = await jose.jwtVerify(token, localKeys, {
        issuer, typ: 'at+jwt', algorithms: ['RS256', 'ES256'], requiredClaims: ['exp', 'sub'],
      });
      return payload;
    } catch (err) {
      throw new errors.InvalidGrant(`${what}: ${err.code ?? err.message}`);
    }
  };
  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const { params, client } = ctx.oidc;
    const str = (name) => (typeof params[name] === 'string' && params[name] !== '' ? params[name] : undefined);
    const missing = ['subject_token', 'subject_token_type'].filter((n) => !str(n));
    if (missing.length) throw new errors.InvalidRequest(`missing required parameter(s) (${missing.join(',')})`);
    if (str('subject_token_type') !== TOKEN_TYPE_ACCESS_TOKEN) {
      throw new errors.InvalidGrant(`unsupported subject_token_type ${str('subject_token_type')}`);
    }
    const requested = str('requested_token_type');
    if (requested !== undefined && requested !== TOKEN_TYPE_ACCESS_TOKEN) {
      throw new errors.InvalidRequest(`unsupported requested_token_type ${requested}`);
    }
    const subject = await verifyOwnAccessToken(str('subject_token'), 'subject_token');

    let act = { sub: client.clientId };
    if (str('actor_token') || str('actor_token_type')) {
      if (!str('actor_token') || !str('actor_token_type')) {
        throw new errors.InvalidRequest('actor_token and actor_token_type go together');
      }
      if (str('actor_token_type') !== TOKEN_TYPE_ACCESS_TOKEN) {
        throw new errors.InvalidGrant(`unsupported actor_token_type ${str('actor_token_type')}`);
      }
      act = { sub: (await verifyOwnAccessToken(str('actor_token'), 'actor_token')).sub };
    }
    if (subject.act) act.act = subject.act; // delegation chain (RFC 8693 section 4.1)

    const scope = str('scope') ?? (typeof subject.scope === 'string' && subject.scope ? subject.scope : undefined);
    const now = Math.floor(Date.now() / 1000);
    const ttl = cfg.accessTokenTtl;
    const claims = {
      iss: issuer,
      sub: subject.sub,
      aud: str('audience') ?? str('resource') ?? EXCHANGE_DEFAULT_AUDIENCE,
      iat: now,
      exp: now + ttl,
      jti: crypto.randomBytes(24).toString('base64url'),
      client_id: client.clientId,
      ...(scope ? { scope } : {}),
      act,
    };
    ctx.body = {
      access_token: await signJwt(claims, { typ: 'at+jwt' }, 'RS256'),
      issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
      token_type: 'Bearer',
      expires_in: ttl,
      ...(scope ? { scope } : {}),
    };
  }, EXCHANGE_PARAMS);

  provider.on('server_error', (ctx, err) => log('server_error', ctx.method, ctx.path, err.stack ?? err));
  provider.on('grant.error', (ctx, err) => log('grant.error', err.error ?? err.message, err.error_description ?? '', err.error_detail ?? ''));
  provider.on('end_session.success', () => { stats.end_sessions += 1; });
  provider.on('backchannel.error', (ctx, err, client) => log('backchannel.error', client.clientId, err.message));
  provider.on('backchannel.success', (ctx, client, accountId, sid) => log('backchannel.sent', client.clientId, accountId, sid ?? ''));

  // ---- request log + last-resort error handler (outermost)
  provider.use(async (ctx, next) => {
    const started = Date.now();
    try {
      await next();
    } catch (err) {
      ctx.status = err.status && err.status < 600 ? err.status : 500;
      ctx.type = 'json';
      ctx.body = { error: err.status ? err.message : 'server_error' };
      if (!err.status || err.status >= 500) log('error', ctx.method, ctx.path, err.stack ?? err);
    } finally {
      if (!cli.quiet) log(ctx.method, ctx.path, '->', ctx.status, `${Date.now() - started}ms`);
    }
  });

  // ---- JWKS and discovery instrumentation: fetch counts, rotated and extra keys, odd members
  const publicJwk = ({
    d, p, q, dp, dq, qi, ...pub
  }) => pub;
  provider.use(async (ctx, next) => {
    const isJwks = ctx.method === 'GET' && ctx.path === '/jwks';
    const isDiscovery = ctx.method === 'GET' && ctx.path === '/.well-known/openid-configuration';
    if (!isJwks && !isDiscovery) return next();
    if (isJwks) stats.jwks_requests += 1;
    else stats.discovery_requests += 1;
    await next();
    if (ctx.status !== 200 || !ctx.body) return undefined;
    const body = typeof ctx.body === 'string' || Buffer.isBuffer(ctx.body) ? JSON.parse(ctx.body.toString()) : { ...ctx.body };
    if (isJwks) {
      let keys = [...(body.keys ?? [])];
      if (faults.rotatedRsa) {
        const original = privateKeys.find((k) => k.alg === 'RS256');
        keys = keys.filter((k) => k.kid !== original.kid);
        keys.unshift(publicJwk(faults.rotatedRsa));
      }
      body.keys = [...keys, ...faults.jwksExtra];
    } else {
      Object.assign(body, faults.discoveryExtra);
    }
    ctx.body = body;
    return undefined;
  });

  // ---- token endpoint instrumentation: stats, injected faults, delays, id_token corruption
  provider.use(async (ctx, next) => {
    if (ctx.method !== 'POST' || (ctx.path !== '/token' && ctx.path !== '/token/revocation')) {
      return next();
    }
    if (ctx.path === '/token/revocation') {
      stats.revocations += 1;
      return next();
    }
    stats.token_traceparents.push(ctx.get('traceparent'));
    if (stats.token_traceparents.length > 50) stats.token_traceparents.shift();

    if (faults.tokenDelayMs > 0 && !faults.tokenDelayAfter) {
      await new Promise((r) => { setTimeout(r, faults.tokenDelayMs); });
    }

    const count = (grantType, scope) => {
      const g = grantType || 'unknown';
      stats.token_requests[g] = (stats.token_requests[g] ?? 0) + 1;
      if (g === 'client_credentials') {
        const s = scope ?? '';
        stats.client_credentials_by_scope[s] = (stats.client_credentials_by_scope[s] ?? 0) + 1;
      }
    };
    const countError = (error) => {
      stats.token_errors[error] = (stats.token_errors[error] ?? 0) + 1;
    };

    if (faults.tokenStatus && faults.tokenCount !== 0) {
      if (faults.tokenCount > 0) faults.tokenCount -= 1;
      let form = {};
      try { form = Object.fromEntries(new URLSearchParams(await readBody(ctx))); } catch { /* counted as unknown */ }
      count(form.grant_type, form.scope);
      ctx.status = faults.tokenStatus;
      ctx.set('Cache-Control', 'no-store');
      if (faults.tokenBody !== undefined) {
        countError(`http_${faults.tokenStatus}`);
        ctx.type = 'text/plain';
        // koa turns an empty string into 204-style nothing; a Buffer keeps the status
        ctx.body = Buffer.from(faults.tokenBody, 'utf8');
        return undefined;
      }
      countError('temporarily_unavailable');
      ctx.body = { error: 'temporarily_unavailable', error_description: 'injected by /__test/token-endpoint-fault' };
      return undefined;
    }

    const proof = ctx.get('DPoP');
    try {
      await next();
    } finally {
      if (proof) {
        let jkt = 'unreadable';
        let nonce = false;
        try {
          jkt = await jose.calculateJwkThumbprint(jose.decodeProtectedHeader(proof).jwk);
          nonce = typeof jose.decodeJwt(proof).nonce === 'string';
        } catch { /* recorded as unreadable */ }
        stats.dpop_token_requests.push({
          grant: ctx.oidc?.body?.grant_type ?? 'unknown',
          jkt,
          nonce,
          status: ctx.status,
          token_type: ctx.body && typeof ctx.body === 'object' ? ctx.body.token_type ?? null : null,
        });
        if (stats.dpop_token_requests.length > 50) stats.dpop_token_requests.shift();
      }
      let body = {};
      try { body = ctx.oidc?.body ?? {}; } catch { /* parse failure */ }
      count(typeof body.grant_type === 'string' ? body.grant_type : undefined, typeof body.scope === 'string' ? body.scope : undefined);
      const grant = typeof body.grant_type === 'string' ? body.grant_type : 'unknown';
      const seen = (stats.token_resources[grant] ??= []);
      seen.push([body.resource ?? ''].flat().join(' '));
      if (seen.length > 50) seen.shift();
      if (ctx.status >= 400 && ctx.body && typeof ctx.body === 'object' && ctx.body.error) {
        countError(ctx.body.error);
      }
    }

    if (faults.tokenDelayMs > 0 && faults.tokenDelayAfter) {
      await new Promise((r) => { setTimeout(r, faults.tokenDelayMs); });
    }

    if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      if (faults.tokenType !== undefined && ctx.body.token_type) {
        ctx.body = { ...ctx.body, token_type: faults.tokenType };
      }
      if (faults.refreshWithoutIdToken && ctx.oidc?.body?.grant_type === 'refresh_token' && ctx.body.id_token) {
        const { id_token: omitted, ...rest } = ctx.body;
        ctx.body = rest;
      }
    }

    if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object' && typeof ctx.body.id_token === 'string') {
      if (faults.tamperIdToken > 0) {
        faults.tamperIdToken -= 1;
        ctx.body = { ...ctx.body, id_token: tamperSignature(ctx.body.id_token) };
        log('test: tampered id_token signature');
      } else if (faults.idTokenClaimsCount > 0) {
        faults.idTokenClaimsCount -= 1;
        const extra = faults.idTokenClaims;
        ctx.body = { ...ctx.body, id_token: await resignIdToken(ctx.body.id_token, (p) => { Object.assign(p, extra); }) };
        if (faults.idTokenClaimsCount === 0) faults.idTokenHeader = undefined;
        log('test: re-signed id_token with claims', Object.keys(extra).join(','));
      } else if (faults.refreshIdTokenClaims && ctx.oidc?.body?.grant_type === 'refresh_token') {
        const patch = faults.refreshIdTokenClaims;
        faults.refreshIdTokenClaims = undefined;
        ctx.body = {
          ...ctx.body,
          id_token: await resignIdToken(ctx.body.id_token, (p) => {
            for (const [k, v] of Object.entries(patch)) {
              if (v === null) delete p[k]; else p[k] = v;
            }
          }),
        };
        log(`test: re-signed refresh id_token with ${Object.keys(patch).join(',')} changed`);
      } else if (faults.wrongIssIdToken > 0) {
        faults.wrongIssIdToken -= 1;
        ctx.body = {
          ...ctx.body,
          id_token: await resignIdToken(ctx.body.id_token, (p) => { p.iss = 'http://evil.example'; }),
        };
        log('test: re-signed id_token with iss=http://evil.example');
      } else if (faults.rotatedRsa && jose.decodeProtectedHeader(ctx.body.id_token).alg === 'RS256') {
        ctx.body = { ...ctx.body, id_token: await resignIdToken(ctx.body.id_token, () => {}) };
      }
    }
    if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      remember('access_tokens', ctx.body.access_token);
      remember('refresh_tokens', ctx.body.refresh_token);
      remember('id_tokens', ctx.body.id_token);
    }
    return undefined;
  });

  // ---- RFC 9126 pushed authorization requests: record who pushed what
  provider.use(async (ctx, next) => {
    if (ctx.method !== 'POST' || ctx.path !== '/request') return next();
    await next();
    let body = {};
    try { body = ctx.oidc?.body ?? {}; } catch { /* parse failure */ }
    stats.par_requests.push({
      client_id: ctx.oidc?.client?.clientId ?? null,
      params: Object.keys(body).sort(),
      dpop_jkt: typeof body.dpop_jkt === 'string' ? body.dpop_jkt : null,
      status: ctx.status,
    });
    if (stats.par_requests.length > 50) stats.par_requests.shift();
    return undefined;
  });

  // ---- interactions: login form, automatic consent, abort
  provider.use(async (ctx, next) => {
    const m = /^\/interaction\/([\w-]+)(\/login|\/abort)?$/.exec(ctx.path);
    if (!m) return next();
    const [, uid, action] = m;
    ctx.set('Cache-Control', 'no-store');

    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (err) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Sign-in expired', `<p class="error">${html(err.error_description ?? err.message)}</p>`);
      return undefined;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Sign-in expired', '<p class="error">interaction mismatch</p>');
      return undefined;
    }
    const finish = async (result) => {
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
      ctx.status = 303;
      ctx.redirect(returnTo);
    };

    if (!action && ctx.method === 'GET') {
      if (details.prompt.name === 'login') {
        ctx.type = 'html';
        const requestedAcr = String(details.params.acr_values ?? '').split(' ').find((v) => cfg.acrValues.includes(v));
        ctx.body = loginPage(uid, {
          login: details.params.login_hint ?? '',
          clientId: details.params.client_id,
          acrValues: cfg.acrValues,
          acr: requestedAcr ?? cfg.acrValues[0],
        });
        return undefined;
      }
      // consent (explicit prompt=consent, or anything else): grant automatically
      let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
      grant ??= new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      const scope = String(details.params.scope ?? '');
      grant.addOIDCScope(scope.split(' ').filter((s) => OIDC_SCOPES.includes(s)).join(' ') || 'openid');
      const missingClaims = details.prompt.details.missingOIDCClaims;
      if (missingClaims) grant.addOIDCClaims(missingClaims);
      for (const [indicator, scopes] of Object.entries(details.prompt.details.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      const grantId = await grant.save();
      await finish({ consent: { grantId } });
      return undefined;
    }

    if (action === '/abort' && ctx.method === 'GET') {
      await finish({ error: 'access_denied', error_description: 'End-User aborted interaction' });
      return undefined;
    }

    if (action === '/login' && ctx.method === 'POST') {
      const form = await readForm(ctx);
      const login = String(form.login ?? '');
      const user = Object.hasOwn(users, login) ? users[login] : undefined;
      const ok = user && typeof form.password === 'string'
        && crypto.timingSafeEqual(
          crypto.createHash('sha256').update(form.password).digest(),
          crypto.createHash('sha256').update(String(user.password)).digest(),
        );
      if (!ok) {
        ctx.status = 200;
        ctx.type = 'html';
        ctx.body = loginPage(uid, {
          error: 'Invalid username or password.', login, clientId: details.params.client_id, acrValues: cfg.acrValues,
        });
        return undefined;
      }
      // The acr this login yields: the form's choice (one of the configured values), else the
      // first configured value; none when the IdP has no acr values.
      const acr = cfg.acrValues.includes(form.acr) ? form.acr : cfg.acrValues[0];
      if (form.acr !== undefined && form.acr !== acr) {
        ctx.status = 400;
        ctx.type = 'html';
        ctx.body = loginPage(uid, {
          error: 'Unknown authentication level.', login, clientId: details.params.client_id, acrValues: cfg.acrValues,
        });
        return undefined;
      }
      await finish({ login: { accountId: login, ...(acr ? { acr, amr: acr === cfg.acrValues[0] ? ['pwd'] : ['pwd', 'otp'] } : {}) } });
      return undefined;
    }

    ctx.status = 405;
    ctx.body = { error: 'method_not_allowed' };
    return undefined;
  });

  // ---- test-control endpoints
  const testRoutes = {
    'GET /__test/stats': async () => stats,
    'GET /__test/issued': async () => Object.fromEntries(Object.entries(issued).map(([k, v]) => [k, [...v]])),
    'POST /__test/reset': async () => { resetStats(); return { ok: true }; },
    'POST /__test/tamper-next-id-token': async () => { faults.tamperIdToken += 1; return { ok: true }; },
    'POST /__test/wrong-iss-next-id-token': async () => { faults.wrongIssIdToken += 1; return { ok: true }; },
    'POST /__test/token-endpoint-fault': async (ctx) => {
      const body = await readJson(ctx);
      const status = Number(body.status ?? 0);
      if (body.body !== undefined && typeof body.body !== 'string') {
        throw Object.assign(new Error('body must be a string'), { status: 400 });
      }
      if (status === 0) {
        faults.tokenStatus = 0;
        faults.tokenCount = 0;
        faults.tokenBody = undefined;
      } else {
        if (!Number.isInteger(status) || status < 400 || status > 599) {
          throw Object.assign(new Error('status must be 0 or 400..599'), { status: 400 });
        }
        const n = body.count === undefined ? 1 : Number(body.count);
        if (!Number.isInteger(n) || n < -1 || n === 0) {
          throw Object.assign(new Error('count must be -1 (until cleared) or a positive integer'), { status: 400 });
        }
        faults.tokenStatus = status;
        faults.tokenCount = n;
        faults.tokenBody = body.body;
      }
      return { status: faults.tokenStatus, count: faults.tokenCount, body: faults.tokenBody ?? null };
    },
    'POST /__test/token-endpoint-delay': async (ctx) => {
      const body = await readJson(ctx);
      faults.tokenDelayMs = Math.max(0, Number(body.ms) || 0);
      faults.tokenDelayAfter = body.after === true;
      return { ms: faults.tokenDelayMs, after: faults.tokenDelayAfter };
    },
    // The next refresh response's id_token is re-signed with the IdP's key after these claims
    // are overwritten (null deletes one): {"sub":"mallory"}, {"iss":"http://evil"},
    // {"auth_time":1}. One-shot; {} clears.
    'POST /__test/refresh-id-token': async (ctx) => {
      const claims = await readJson(ctx);
      faults.refreshIdTokenClaims = Object.keys(claims).length ? claims : undefined;
      return { claims: faults.refreshIdTokenClaims ?? null };
    },
    'POST /__test/refresh-without-id-token': async (ctx) => {
      const body = await readJson(ctx);
      faults.refreshWithoutIdToken = body.enabled !== false;
      return { enabled: faults.refreshWithoutIdToken };
    },
    'POST /__test/token-type': async (ctx) => {
      const body = await readJson(ctx);
      faults.tokenType = typeof body.value === 'string' ? body.value : undefined;
      return { value: faults.tokenType ?? null };
    },
    'GET /__test/refresh-tokens': async (ctx) => {
      const sub = ctx.query.sub;
      const now = Date.now();
      let active = 0;
      for (const entry of store.table('RefreshToken').values()) {
        const p = entry.payload;
        if (!StateStore.live(entry, now)) continue;
        if (sub !== undefined && p.accountId !== sub) continue;
        if (p.consumed) continue;
        if (typeof p.exp === 'number' && p.exp * 1000 <= now) continue;
        // a token whose grant is gone is revoked
        if (p.grantId && !StateStore.live(store.table('Grant').get(p.grantId), now)) continue;
        active += 1;
      }
      return { active };
    },
    // Revokes (deletes) every refresh token of an account, as an admin or a security tool
    // would: the next refresh with one of them gets invalid_grant.
    'POST /__test/revoke-refresh-tokens': async (ctx) => {
      const body = await readJson(ctx);
      let revoked = 0;
      const table = store.table('RefreshToken');
      for (const [id, entry] of [...table.entries()]) {
        if (body.sub === undefined || entry.payload.accountId === body.sub) {
          table.delete(id);
          revoked += 1;
        }
      }
      store.persist();
      return { revoked };
    },
    'GET /__test/sessions': async (ctx) => {
      const sub = ctx.query.sub;
      let active = 0;
      for (const entry of store.table('Session').values()) {
        if (StateStore.live(entry) && entry.payload.accountId && (sub === undefined || entry.payload.accountId === sub)) {
          active += 1;
        }
      }
      return { active };
    },
    'POST /__test/jwks-extra': async (ctx) => {
      const body = await readJson(ctx);
      if (!Array.isArray(body.keys)) throw Object.assign(new Error('keys array required'), { status: 400 });
      faults.jwksExtra = body.keys;
      return { extra: faults.jwksExtra.length };
    },
    'POST /__test/rotate-keys': async () => {
      const previous = currentKey('RS256').kid;
      const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true, modulusLength: 2048 });
      const jwk = await jose.exportJWK(privateKey);
      jwk.kid = `rs256-${(await jose.calculateJwkThumbprint(jwk)).slice(0, 12)}`;
      jwk.alg = 'RS256';
      jwk.use = 'sig';
      faults.rotatedRsa = jwk;
      return { kid: jwk.kid, previous_kid: previous };
    },
    'POST /__test/mutate-next-id-token': async (ctx) => {
      const body = await readJson(ctx);
      if (!body.claims || typeof body.claims !== 'object') {
        throw Object.assign(new Error('claims object required'), { status: 400 });
      }
      faults.idTokenClaims = body.claims;
      faults.idTokenHeader = body.header && typeof body.header === 'object' ? body.header : undefined;
      faults.idTokenClaimsCount = body.count === undefined ? 1 : Number(body.count);
      return { count: faults.idTokenClaimsCount };
    },
    'POST /__test/discovery-extra': async (ctx) => {
      const body = await readJson(ctx);
      faults.discoveryExtra = body.members && typeof body.members === 'object' ? body.members : {};
      return { members: Object.keys(faults.discoveryExtra) };
    },
    'POST /__test/sign': async (ctx) => {
      const body = await readJson(ctx);
      if (!body.claims || typeof body.claims !== 'object') {
        throw Object.assign(new Error('claims object required'), { status: 400 });
      }
      return { jwt: await signJwt(body.claims, body.header ?? {}, body.alg ?? 'RS256') };
    },
    'POST /__test/backchannel-logout': async (ctx) => {
      const body = await readJson(ctx);
      const sub = body.sub;
      if (typeof sub !== 'string' || !sub) {
        throw Object.assign(new Error('sub required'), { status: 400 });
      }
      // sids per client from the subject's live IdP sessions; end those sessions
      const sidsByClient = new Map();
      const sessionTable = store.table('Session');
      for (const [id, entry] of sessionTable) {
        if (!StateStore.live(entry) || entry.payload.accountId !== sub) continue;
        for (const [clientId, auth] of Object.entries(entry.payload.authorizations ?? {})) {
          if (!sidsByClient.has(clientId)) sidsByClient.set(clientId, new Set());
          if (auth.sid) sidsByClient.get(clientId).add(auth.sid);
        }
        sessionTable.delete(id);
      }
      store.persist();
      const sent = [];
      const now = Math.floor(Date.now() / 1000);
      for (const client of cfg.clients) {
        if (!client.backchannel_logout_uri) continue;
        // optional `client_id`: notify only that client (its sessions end; other clients' do not)
        if (typeof body.client_id === 'string' && body.client_id !== client.client_id) continue;
        const sids = [...(sidsByClient.get(client.client_id) ?? [])];
        for (const sid of sids.length ? sids : [undefined]) {
          const claims = {
            iss: issuer,
            aud: client.client_id,
            iat: now,
            exp: now + 120,
            jti: crypto.randomUUID(),
            sub,
            events: { [BACKCHANNEL_EVENT]: {} },
            ...(sid ? { sid } : {}),
          };
          const logoutToken = await signJwt(claims, { typ: 'logout+jwt' }, 'RS256');
          remember('logout_tokens', logoutToken);
          let status = 0;
          let error;
          try {
            const res = await fetch(client.backchannel_logout_uri, {
              method: 'POST',
              headers: { 'content-type': 'application/x-www-form-urlencoded' },
              body: new URLSearchParams({ logout_token: logoutToken }),
              redirect: 'manual',
              signal: AbortSignal.timeout(10_000),
            });
            status = res.status;
            await res.arrayBuffer().catch(() => {});
          } catch (err) {
            error = err.cause?.code ?? err.message;
          }
          sent.push({
            client_id: client.client_id, status, ...(sid ? { sid } : {}), ...(error ? { error } : {}),
          });
        }
      }
      return { sent };
    },
  };

  provider.use(async (ctx, next) => {
    if (!ctx.path.startsWith('/__test/')) return next();
    const handler = testRoutes[`${ctx.method} ${ctx.path}`];
    ctx.set('Cache-Control', 'no-store');
    if (!handler) {
      ctx.status = 404;
      ctx.body = { error: 'not_found' };
      return undefined;
    }
    try {
      ctx.body = await handler(ctx);
      ctx.status = 200;
    } catch (err) {
      ctx.status = err.status ?? 500;
      ctx.body = { error: err.message };
      if (!err.status) log('test endpoint error', ctx.path, err.stack ?? err);
    }
    return undefined;
  });

  server.on('request', provider.callback());
  server.on('clientError', (err, socket) => { socket.destroy(); });

  const shutdown = () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  process.stdout.write(`READY ${JSON.stringify({ issuer, port })}\n`);
}

process.on('unhandledRejection', (err) => log('unhandledRejection', err?.stack ?? err));

main().catch((err) => {
  log('fatal', err?.stack ?? err);
  process.exit(1);
});
