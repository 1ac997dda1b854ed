#!/usr/bin/env node
// A minimal upstream API of another stack (plain node:http) that answers every request with
// the same small JSON body, framed the way many real APIs frame it:
//
//   node testing/upstream/framing.mjs [--port 0] [--framing chunked|length|streamed|broken]
//        [--body '<json>'] [--repeat N] [--content-type T] [--end-delay-ms MS]
//        [--expect-authorization 'Bearer …']
//
// `--framing chunked` (default): `res.writeHead(200, …)` then `res.end(body)`, which Node sends
// with `Transfer-Encoding: chunked` (what Express, ASP.NET Core and Go do for streamed or
// larger bodies), head and body in one segment. `--framing length`: the same with
// `Content-Length`. `--framing streamed`: chunked, `res.write(body)` at once and `res.end()`
// `--end-delay-ms` later (default 5), so the terminating chunk is a separate, later write.
// `--framing broken`: chunked, the first half of the body, then the connection is destroyed
// without the terminating chunk, `--end-delay-ms` later (0: as soon as the write went out). `--repeat N` sends the body N times over (a larger body);
// `--content-type` defaults to application/json.
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
    repeat: { type: 'string', default: '1' },
    'content-type': { type: 'string', default: 'application/json' },
    'end-delay-ms': { type: 'string', default: '5' },
  },
  strict: true,
});

if (!['chunked', 'length', 'streamed', 'broken'].includes(args.framing)) {
  process.stderr.write('--framing must be chunked, length, streamed or broken\n');
  process.exit(2);
}
const body = Buffer.from(args.body.repeat(Number(args.repeat)));
const contentType = args['content-type'];
const endDelay = Number(args['end-delay-ms']);
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
    if (args.framing === 'length') {
      res.writeHead(200, { 'content-type': contentType, 'content-length': body.length });
      res.end(body);
    } else if (args.framing === 'streamed') {
      res.writeHead(200, { 'content-type': contentType });
      res.write(body);
      setTimeout(() => res.end(), endDelay);
    } else if (args.framing === 'broken') {
      res.writeHead(200, { 'content-type': contentType });
      res.write(body.subarray(0, Math.max(1, body.length >> 1)));
      // 0: right after the write went out, in the same turn of the event loop.
      if (endDelay === 0) setImmediate(() => res.destroy());
      else setTimeout(() => res.destroy(), endDelay);
    } else {
      res.writeHead(200, { 'content-type': contentType });
      res.end(body);
    }
  });
});
// Keep-alive connections from a proxy stay open between benchmark scenarios.
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`READY ${JSON.stringify({ port: server.address().port })}\n`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
