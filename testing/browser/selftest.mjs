#!/usr/bin/env node
// Runs e2e.mjs against mock-bff.mjs + the test IdP + the example API, all on ephemeral
// loopback ports: checks the JavaScript side of the setup without the Rust gateway.
//
//   node testing/browser/selftest.mjs [--screenshot /tmp/x.png]

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const children = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-browser-selftest-'));

function cleanup() {
  for (const c of children) c.kill('SIGTERM');
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.on('exit', cleanup);
setTimeout(() => {
  process.stdout.write('not ok - selftest: timed out after 90 s\n');
  process.exit(1);
}, 90_000).unref();

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function start(script, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(root, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => {
      err += d;
      if (process.env.SELFTEST_VERBOSE) process.stderr.write(d);
    });
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^READY (.*)$/m.exec(out);
      if (m) resolve(JSON.parse(m[1]));
    });
    child.on('exit', (code) => reject(new Error(`${script} exited ${code}: ${err}`)));
  });
}

const bffPort = await freePort();
const bff = `http://127.0.0.1:${bffPort}`;
const config = path.join(tmp, 'idp.json');
fs.writeFileSync(config, JSON.stringify({
  clients: [{
    client_id: 'spa-bff',
    client_secret: 'secret-for-tests-only-0123456789',
    redirect_uris: [`${bff}/signin-oidc`],
    post_logout_redirect_uris: [`${bff}/signout-callback-oidc`],
    grant_types: ['authorization_code', 'refresh_token'],
  }],
}));

const { issuer } = await start('testing/idp/server.mjs', ['--port', '0', '--config', config]);
const api = await start('examples/api/server.mjs', ['--port', '0', '--issuer', issuer]);
await start('testing/browser/mock-bff.mjs', ['--port', String(bffPort), '--issuer', issuer, '--api', `http://127.0.0.1:${api.port}`]);

const e2e = spawn(process.execPath, [path.join(root, 'testing/browser/e2e.mjs'), '--gateway', bff, ...process.argv.slice(2)], { stdio: 'inherit' });
e2e.on('exit', (code) => {
  process.exit(code ?? 1);
});
