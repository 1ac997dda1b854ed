#!/usr/bin/env node
// A minimal upstream API of another stack (plain node:http) that answers every request with
// the same small JSON body, framed the way many real APIs frame it:
//
//   node testing/upstream/framing.mjs [--port 0] [--framing chunked|length] [--body '<json>']
//                                      [--expect-authorization 'Bearer …']
//
// `--framing chunked` (default): `res.writeHead(200, …)` then `res.end(body)`, which Node sends
// with `Transfer-Encoding: chunked` (what Express, ASP.NET Core and Go do for streamed or
// larger bodies). `--framing length`: the same with `Content-Length`.
// With `--expect-authorization`, a request carrying another `Authorization` gets 401 (so a
// benchmark notices a gateway that attached the wrong token); none at all is accepted.
// Prints `READY {"port":<port>}` once listening on 127.0.0.1.

import * as http from 'node:http';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    framing: { type: 'string', default: 'chunked' },
    body: { type: 'string', default: '{"message":"hello from a chunked upstream","ok":true}' },
    'expect-authorization': { type: 'string' },
  },
  strict: true,
});

if (!['chunked', 'length'].includes(args.framing)) {
  process.stderr.write('--framing must be chunked or length\n');
  process.exit(2);
}
const body = Buffer.from(args.body);
const expected = args['expect-authorization'];

const server = http.createServer((req, res) => {
  // Drain any request body before answering.
  req.resume();
  req.on('end', () => {
    const auth = req.headers.authorization;
    if (expected !== undefined && auth !== undefined && auth !== expected) {
      res.writeHead(401, { 'content-type': 'text/plain' });
      res.end('wrong token');
      return;
    }
    if (args.framing === 'chunked') {
      res.writeHead(200, { 'content-type': 'application/json' });
    } else {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
    }
    res.end(body);
  });
});
// Keep-alive connections from a proxy stay open between benchmark scenarios.
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`READY ${JSON.stringify({ port: server.address().port })}\n`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
