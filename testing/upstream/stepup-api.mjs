#!/usr/bin/env node
// A resource server that asks for step-up authentication itself (RFC 9470 §3), for
// Portcullis' step-up tests.
//
//   node testing/upstream/stepup-api.mjs [--port 0] [--quiet]
//
// Prints `READY {"port":<port>}` once listening on 127.0.0.1. Routes:
//   GET /challenge?acr_values=<v>&max_age=<n>&scheme=Bearer|DPoP
//       401 with `WWW-Authenticate: Basic realm="stepup-api"` and
//       `WWW-Authenticate: <scheme> error="insufficient_user_authentication",
//        error_description="…", acr_values="<v>", max_age=<n>` (each parameter only when given),
//       and a JSON body the gateway must not pass on ({"upstream_body": true, ...}).
//   GET /__stats  {"requests": n, "challenges": n, "authorized": n}
//   anything else 200 {"ok": true, "method", "path", "authorization": "<scheme>" | null}

import * as http from 'node:http';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    quiet: { type: 'boolean', default: false },
  },
  strict: true,
});
const log = (...parts) => { if (!args.quiet) process.stderr.write(`[stepup-api] ${parts.join(' ')}\n`); };

const stats = { requests: 0, challenges: 0, authorized: 0 };

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname === '/__stats') {
    send(res, 200, stats);
    return;
  }
  stats.requests += 1;
  if (req.headers.authorization) stats.authorized += 1;
  log(req.method, url.pathname);
  req.resume();
  if (url.pathname.endsWith('/challenge')) {
    stats.challenges += 1;
    const scheme = url.searchParams.get('scheme') ?? 'Bearer';
    let challenge = `${scheme} error="insufficient_user_authentication", error_description="A different authentication level is required"`;
    const acr = url.searchParams.get('acr_values');
    if (acr !== null) challenge += `, acr_values="${acr.replace(/["\\]/g, '\\$&')}"`;
    const maxAge = url.searchParams.get('max_age');
    if (maxAge !== null) challenge += `, max_age=${maxAge}`;
    res.setHeader('www-authenticate', ['Basic realm="stepup-api"', challenge]);
    send(res, 401, { upstream_body: true, detail: 'the upstream wants a stronger sign-in' });
    return;
  }
  const authorization = req.headers.authorization ? req.headers.authorization.split(' ')[0] : null;
  send(res, 200, {
    ok: true, method: req.method, path: url.pathname, authorization,
  });
});

server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`READY ${JSON.stringify({ port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
