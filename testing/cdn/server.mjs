#!/usr/bin/env node
// A static server standing in for a CDN (index_html_url) or a dev server such as Vite
// (static_assets_url) in the gateway's end-to-end tests. Plain node:http.
//
//   node testing/cdn/server.mjs [--port 0]
//
// Prints `READY {"port":<port>}` once listening. It serves an in-memory site:
//   GET /app/index.html, GET /  the current page (ETag "v<n>"; If-None-Match → 304)
//   GET /src/main.js            a script
//   anything else               404 (no SPA fallback, unlike Vite: the gateway must ask for /)
//   WebSocket upgrade on /      101, then echoes raw bytes (a stand-in for Vite's HMR socket)
// Test switches (never under the site's paths):
//   GET  /__test/stats          {"requests", "full", "not_modified", "by_path": {...}, "last_headers"}
//   POST /__test/page           body = the new page; its ETag becomes "v<n+1>"
//   POST /__test/fail?status=503  answer every site request with that status (0 = stop failing)
//   POST /__test/etag?on=false  send no ETag (and ignore If-None-Match)

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: { port: { type: 'string', default: '0' } },
  strict: true,
});

let page = '<!doctype html><html><head><meta charset="utf-8"><title>cdn spa</title>'
  + '<script type="module" src="https://cdn.example/app/main.js"></script></head><body><div id="app"></div></body></html>';
let version = 1;
let failStatus = 0;
let etags = true;
const stats = { requests: 0, full: 0, not_modified: 0, by_path: {}, last_headers: {} };

const readBody = (req) => new Promise((resolve) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
});

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname.startsWith('/__test/')) {
    if (url.pathname === '/__test/stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(stats));
      return;
    }
    if (req.method === 'POST' && url.pathname === '/__test/page') {
      page = await readBody(req);
      version += 1;
    } else if (req.method === 'POST' && url.pathname === '/__test/fail') {
      failStatus = Number(url.searchParams.get('status') ?? '503');
    } else if (req.method === 'POST' && url.pathname === '/__test/etag') {
      etags = url.searchParams.get('on') !== 'false';
    } else {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(204).end();
    return;
  }
  stats.requests += 1;
  stats.by_path[url.pathname] = (stats.by_path[url.pathname] ?? 0) + 1;
  stats.last_headers = req.headers;
  if (failStatus) {
    res.writeHead(failStatus, { 'content-type': 'text/plain' }).end('failing on purpose');
    return;
  }
  if (url.pathname === '/' || url.pathname === '/app/index.html') {
    const etag = `"v${version}"`;
    if (etags && req.headers['if-none-match'] === etag) {
      stats.not_modified += 1;
      res.writeHead(304, { etag }).end();
      return;
    }
    stats.full += 1;
    const headers = { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'max-age=60' };
    if (etags) headers.etag = etag;
    res.writeHead(200, headers).end(page);
    return;
  }
  if (url.pathname === '/src/main.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' }).end('console.log("dev")');
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
});

server.on('upgrade', (req, socket) => {
  stats.requests += 1;
  stats.last_headers = req.headers;
  const key = req.headers['sec-websocket-key'];
  if (!key) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  const accept = crypto.createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
    + `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  socket.on('data', (chunk) => socket.write(chunk));
  socket.on('error', () => socket.destroy());
});

server.on('clientError', (err, socket) => socket.destroy());
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
