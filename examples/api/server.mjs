#!/usr/bin/env node
// Upstream API for Portcullis tests and the demo. Plain node:http, no framework.
//
//   node examples/api/server.mjs --port <P> --issuer <idp issuer> [--audience urn:portcullis:api]
//                                [--quiet]
//
// Prints `READY {"port":<port>}` once listening. Routes:
//   GET  .../whoami           Bearer JWT required (signature via the issuer's JWKS, iss, aud, exp)
//   GET  /sse?count=5&interval_ms=200   text/event-stream, one `data: <i>` event per interval
//   GET  /slow?ms=2000        answers after the delay
//   GET  /status/<code>       answers that status with a small JSON body
//   POST /upload              streams the body, answers {"bytes", "sha256"}
//   GET  /stats               {"requests": n}
//   anything else (/echo/...) echoes method, path, query, headers and body as JSON

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import * as jose from 'jose';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    issuer: { type: 'string' },
    audience: { type: 'string', default: 'urn:portcullis:api' },
    quiet: { type: 'boolean', default: false },
  },
  strict: true,
});

if (!args.issuer) {
  process.stderr.write('usage: node examples/api/server.mjs --port <P> --issuer <idp issuer> [--audience urn:portcullis:api]\n');
  process.exit(2);
}
const issuer = args.issuer.replace(/\/+$/, '');

function log(...parts) {
  process.stderr.write(`[api] ${parts.join(' ')}\n`);
}

// JWKS discovered lazily and retried until the IdP answers (it may start after us).
let jwks;
let discovering;
async function getJwks() {
  if (jwks) return jwks;
  discovering ??= (async () => {
    try {
      const res = await fetch(`${issuer}/.well-known/openid-configuration`, { signal: AbortSignal.timeout(5000) });
      if (!res.ok) throw new Error(`discovery answered ${res.status}`);
      const meta = await res.json();
      jwks = jose.createRemoteJWKSet(new URL(meta.jwks_uri), { timeoutDuration: 5000, cooldownDuration: 1000 });
      return jwks;
    } finally {
      discovering = undefined;
    }
  })();
  return discovering;
}

let requests = 0;

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

async function readText(req, limit = 10 * 1024 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function whoami(req, res) {
  const m = /^Bearer +([^\s]+)$/i.exec(req.headers.authorization ?? '');
  if (!m) {
    sendJson(res, 401, { error: 'missing bearer token' }, { 'www-authenticate': 'Bearer' });
    return;
  }
  let keys;
  try {
    keys = await getJwks();
  } catch (err) {
    sendJson(res, 503, { error: `cannot reach issuer: ${err.message}` });
    return;
  }
  let payload;
  try {
    ({ payload } = await jose.jwtVerify(m[1], keys, {
      issuer,
      audience: args.audience,
      algorithms: ['RS256', 'ES256', 'PS256'],
      clockTolerance: 5,
      requiredClaims: ['exp'],
    }));
  } catch (err) {
    sendJson(res, 401, { error: `invalid token: ${err.code ?? err.message}` }, { 'www-authenticate': 'Bearer error="invalid_token"' });
    return;
  }
  const { authorization, ...receivedHeaders } = req.headers;
  sendJson(res, 200, {
    sub: payload.sub,
    scope: payload.scope,
    aud: payload.aud,
    client_id: payload.client_id,
    exp: payload.exp,
    token_jti: payload.jti,
    received_headers: receivedHeaders,
  });
}

async function sse(url, req, res) {
  const count = Math.min(Math.max(Number(url.searchParams.get('count') ?? 5) || 0, 0), 10_000);
  const interval = Math.min(Math.max(Number(url.searchParams.get('interval_ms') ?? 200) || 0, 0), 60_000);
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  res.flushHeaders();
  let closed = false;
  req.on('close', () => { closed = true; });
  for (let i = 0; i < count && !closed; i += 1) {
    if (i > 0 || interval > 0) await new Promise((r) => { setTimeout(r, interval); });
    if (closed) break;
    res.write(`data: ${i}\n\n`);
  }
  res.end();
}

async function handle(req, res) {
  requests += 1;
  const url = new URL(req.url, 'http://api.invalid');
  const { pathname } = url;

  if (req.method === 'GET' && pathname === '/stats') {
    sendJson(res, 200, { requests });
    return;
  }
  if (pathname === '/whoami' || pathname.endsWith('/whoami')) {
    await whoami(req, res);
    return;
  }
  if (req.method === 'GET' && pathname === '/sse') {
    await sse(url, req, res);
    return;
  }
  if (req.method === 'GET' && pathname === '/slow') {
    const ms = Math.min(Math.max(Number(url.searchParams.get('ms') ?? 2000) || 0, 0), 120_000);
    await new Promise((r) => { setTimeout(r, ms); });
    sendJson(res, 200, { slept_ms: ms });
    return;
  }
  const status = /^\/status\/(\d{3})$/.exec(pathname);
  if (status) {
    const code = Number(status[1]);
    if (code < 200 || code > 599) {
      sendJson(res, 400, { error: 'status must be 200..599' });
      return;
    }
    if (code === 204 || code === 304) {
      res.writeHead(code);
      res.end();
      return;
    }
    sendJson(res, code, { status: code });
    return;
  }
  if (req.method === 'POST' && pathname === '/upload') {
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    for await (const chunk of req) {
      bytes += chunk.length;
      hash.update(chunk);
    }
    sendJson(res, 200, { bytes, sha256: hash.digest('hex') });
    return;
  }

  // echo (/echo/... and every other path)
  const body = await readText(req);
  sendJson(res, 200, {
    method: req.method,
    path: pathname,
    query: url.search.replace(/^\?/, ''),
    headers: req.headers,
    body,
  });
}

const server = http.createServer((req, res) => {
  const started = Date.now();
  if (!args.quiet) res.on('finish', () => log(req.method, req.url.split('?')[0], '->', res.statusCode, `${Date.now() - started}ms`));
  handle(req, res).catch((err) => {
    log('error', err.stack ?? err);
    if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
    else res.destroy();
  });
});
server.on('clientError', (err, socket) => socket.destroy());

// WebSocket test endpoint (any path ending in /ws): completes the RFC 6455 handshake, sends
// one text line saying whether an Authorization header arrived, then echoes raw bytes. The
// gateway tunnels bytes after the 101 and never parses frames, so raw echo proves the tunnel.
server.on('upgrade', (req, socket) => {
  requests += 1;
  const path = req.url.split('?')[0];
  const key = req.headers['sec-websocket-key'];
  if (!path.endsWith('/ws') || !key || (req.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  const accept = crypto.createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
    + `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  socket.write(`${JSON.stringify({ authorization: Boolean(req.headers.authorization), cookie: Boolean(req.headers.cookie) })}\n`);
  socket.on('data', (chunk) => socket.write(chunk));
  socket.on('error', () => socket.destroy());
});

server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`READY ${JSON.stringify({ port: server.address().port })}\n`);
});

const shutdown = () => {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
