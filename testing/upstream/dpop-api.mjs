#!/usr/bin/env node
// A resource server that requires DPoP (RFC 9449 §7), for Portcullis' DPoP tests.
//
//   node testing/upstream/dpop-api.mjs --port <P> --issuer <idp issuer> [--no-nonce] [--quiet]
//                                      [--broken-challenge]
//
// Prints `READY {"port":<port>}` once listening. Every path but /__stats needs:
//   Authorization: DPoP <access token>   the IdP's JWT access token (signature via the issuer's
//                                        JWKS, iss, exp) with a `cnf.jkt`
//   DPoP: <proof>                        typ dpop+jwt, signed by the embedded public `jwk`;
//                                        htm = the method, htu = http://127.0.0.1:<port><path>
//                                        (the full request path, no query), iat within 60 s,
//                                        ath = SHA-256 of the access token, a jti never seen
//                                        before, nonce = this server's current nonce
//                                        (unless --no-nonce), and the jwk's RFC 7638
//                                        thumbprint equal to the token's cnf.jkt.
// A proof without the current nonce is answered 401 with
//   WWW-Authenticate: DPoP error="use_dpop_nonce"  and  DPoP-Nonce: <nonce>
// (with --broken-challenge: that head, half a JSON body, and the connection dropped)
// and every other failure 401 with WWW-Authenticate: DPoP error="invalid_dpop_proof" (or
// invalid_token) and a JSON body naming the check. A Bearer token is refused.
// Success echoes {"ok", "method", "path", "query", "htu", "sub", "jkt", "body"} as JSON.
//
//   GET  /__stats                {"requests", "ok", "nonce_challenges", "failures": [reason...],
//                                 "jkts": [...], "htus": [...]}
//   POST /__rotate-nonce         a new nonce (the next proofs need it)

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import * as jose from 'jose';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    issuer: { type: 'string' },
    'no-nonce': { type: 'boolean', default: false },
    'broken-challenge': { type: 'boolean', default: false },
    quiet: { type: 'boolean', default: false },
  },
  strict: true,
});
if (!args.issuer) {
  process.stderr.write('usage: node testing/upstream/dpop-api.mjs --port <P> --issuer <issuer> [--no-nonce]\n');
  process.exit(2);
}
const issuer = args.issuer.replace(/\/+$/, '');
const log = (...parts) => { if (!args.quiet) process.stderr.write(`[dpop-api] ${parts.join(' ')}\n`); };

let jwks;
async function getJwks() {
  if (jwks) return jwks;
  const res = await fetch(`${issuer}/.well-known/openid-configuration`, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`discovery answered ${res.status}`);
  const meta = await res.json();
  jwks = jose.createRemoteJWKSet(new URL(meta.jwks_uri), { timeoutDuration: 5000 });
  return jwks;
}

let nonce = crypto.randomBytes(16).toString('base64url');
const seenJti = new Set();
const stats = { requests: 0, ok: 0, nonce_challenges: 0, failures: [], jkts: [], htus: [] };
let port = 0;

class Refused extends Error {
  constructor(error, reason) { super(reason); this.error = error; }
}

function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

async function check(req) {
  const auth = req.headers.authorization ?? '';
  const m = /^DPoP\s+(\S+)$/i.exec(auth);
  if (!m) throw new Refused('invalid_token', `Authorization is not a DPoP token: ${auth.split(' ')[0] || 'none'}`);
  const token = m[1];
  const proofs = req.headers.dpop;
  if (typeof proofs !== 'string' || proofs.includes(',')) throw new Refused('invalid_dpop_proof', 'exactly one DPoP header is required');
  let proof;
  try {
    proof = await jose.jwtVerify(proofs, jose.EmbeddedJWK, {
      typ: 'dpop+jwt', algorithms: ['ES256', 'PS256', 'RS256', 'EdDSA'],
    });
  } catch (e) {
    throw new Refused('invalid_dpop_proof', `proof signature: ${e.code ?? e.message}`);
  }
  const { payload, protectedHeader } = proof;
  if (protectedHeader.jwk?.d !== undefined) throw new Refused('invalid_dpop_proof', 'private key in proof');
  const path = new URL(req.url, 'http://x').pathname;
  const expectedHtu = `http://127.0.0.1:${port}${path}`;
  stats.htus.push(payload.htu);
  if (payload.htm !== req.method) throw new Refused('invalid_dpop_proof', `htm ${payload.htm} != ${req.method}`);
  if (payload.htu !== expectedHtu) throw new Refused('invalid_dpop_proof', `htu ${payload.htu} != ${expectedHtu}`);
  if (typeof payload.iat !== 'number' || Math.abs(Date.now() / 1000 - payload.iat) > 60) throw new Refused('invalid_dpop_proof', 'iat not recent');
  const ath = crypto.createHash('sha256').update(token).digest('base64url');
  if (payload.ath !== ath) throw new Refused('invalid_dpop_proof', 'ath mismatch');
  if (typeof payload.jti !== 'string' || !payload.jti) throw new Refused('invalid_dpop_proof', 'no jti');
  if (!args['no-nonce'] && payload.nonce !== nonce) {
    throw new Refused('use_dpop_nonce', payload.nonce ? 'stale nonce' : 'nonce required');
  }
  if (seenJti.has(payload.jti)) throw new Refused('invalid_dpop_proof', 'jti replayed');
  seenJti.add(payload.jti);
  let claims;
  try {
    ({ payload: claims } = await jose.jwtVerify(token, await getJwks(), { issuer, typ: 'at+jwt' }));
  } catch (e) {
    throw new Refused('invalid_token', `access token: ${e.code ?? e.message}`);
  }
  const jkt = await jose.calculateJwkThumbprint(protectedHeader.jwk);
  if (claims.cnf?.jkt !== jkt) throw new Refused('invalid_token', `cnf.jkt ${claims.cnf?.jkt ?? 'missing'} != proof key ${jkt}`);
  return { claims, jkt, htu: payload.htu };
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.url === '/__stats') return send(res, 200, stats);
    if (req.url === '/__rotate-nonce' && req.method === 'POST') {
      nonce = crypto.randomBytes(16).toString('base64url');
      return send(res, 200, { ok: true });
    }
    stats.requests += 1;
    const body = await readBody(req);
    let verdict;
    try {
      verdict = await check(req);
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      if (e.error === 'use_dpop_nonce') {
        stats.nonce_challenges += 1;
        log('nonce challenge:', e.message);
        if (args['broken-challenge']) {
          // The challenge's head, then half a body and a dropped connection.
          res.writeHead(401, {
            'content-type': 'application/json',
            'www-authenticate': 'DPoP error="use_dpop_nonce"',
            'dpop-nonce': nonce,
          });
          res.write('{"error":"use_d');
          setImmediate(() => res.destroy());
          return;
        }
        return send(res, 401, { error: e.error, reason: e.message }, {
          'www-authenticate': 'DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"',
          'dpop-nonce': nonce,
        });
      }
      stats.failures.push(e.message);
      log('refused:', e.message);
      return send(res, 401, { error: e.error, reason: e.message }, {
        'www-authenticate': `DPoP error="${e.error}", algs="ES256 PS256 RS256 EdDSA"`,
      });
    }
    stats.ok += 1;
    stats.jkts.push(verdict.jkt);
    const url = new URL(req.url, 'http://x');
    return send(res, 200, {
      ok: true,
      method: req.method,
      path: url.pathname,
      query: url.search,
      htu: verdict.htu,
      sub: verdict.claims.sub ?? null,
      client_id: verdict.claims.client_id ?? null,
      jkt: verdict.jkt,
      body,
    }, { 'dpop-nonce': nonce });
  } catch (e) {
    log('error', e.stack ?? e);
    return send(res, 500, { error: 'server_error' });
  }
});

server.listen(Number(args.port), '127.0.0.1', () => {
  port = server.address().port;
  process.stdout.write(`READY ${JSON.stringify({ port })}\n`);
});
