// Step-up (RFC 9470) helpers of @portcullis/bff-client: `loginUrl` with `acrValues`/`maxAge`
// and `stepUpLoginUrl` reading the gateway's challenge.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createBffClient } from '../src/index.js';

const ORIGIN = 'https://app.example';
const CHALLENGE = 'Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="urn:example:mfa", max_age=600';

function client(basePath) {
  return createBffClient({
    origin: ORIGIN, basePath, pollInterval: 0, fetch: async () => new Response(null, { status: 500 }),
  });
}

function stepUpResponse(body, header = CHALLENGE) {
  return new Response(JSON.stringify(body), {
    status: 401,
    headers: { 'content-type': 'application/json', 'www-authenticate': header },
  });
}

test('loginUrl carries acr_values and max_age for a step-up login', () => {
  const bff = client();
  const u = new URL(bff.loginUrl({ returnUrl: '/orders', acrValues: ['urn:example:mfa', 'urn:example:hw'], maxAge: 0 }));
  assert.equal(u.origin + u.pathname, `${ORIGIN}/bff/login`);
  assert.equal(u.searchParams.get('returnUrl'), '/orders');
  assert.equal(u.searchParams.get('acr_values'), 'urn:example:mfa urn:example:hw');
  assert.equal(u.searchParams.get('max_age'), '0');
  const plain = new URL(bff.loginUrl({ returnUrl: '/' }));
  assert.equal(plain.searchParams.has('acr_values'), false);
  assert.equal(plain.searchParams.has('max_age'), false);
  bff.close();
});

test('stepUpLoginUrl answers a step-up challenge and leaves the body readable', async () => {
  const bff = client('/admin/bff');
  const response = stepUpResponse({
    error: 'insufficient_user_authentication',
    acr_values: 'urn:example:mfa',
    max_age: 600,
    login_url: '/admin/bff/login?acr_values=urn%3Aexample%3Amfa&max_age=600',
  });
  const u = new URL(await bff.stepUpLoginUrl(response, { returnUrl: '/reports' }));
  assert.equal(u.origin + u.pathname, `${ORIGIN}/admin/bff/login`);
  assert.equal(u.searchParams.get('acr_values'), 'urn:example:mfa');
  assert.equal(u.searchParams.get('max_age'), '600');
  assert.equal(u.searchParams.get('returnUrl'), '/reports');
  assert.equal((await response.json()).error, 'insufficient_user_authentication', 'body still readable');
  bff.close();
});

test('stepUpLoginUrl is null for other responses and never leaves the BFF origin', async () => {
  const bff = client();
  assert.equal(await bff.stepUpLoginUrl(new Response(null, { status: 401 })), null);
  assert.equal(await bff.stepUpLoginUrl(new Response('{}', { status: 403 })), null);
  assert.equal(await bff.stepUpLoginUrl(stepUpResponse({ error: 'invalid_token' }, 'Bearer error="invalid_token"')), null);
  // A login_url on another origin is not followed: the BFF's own login endpoint is used.
  const u = new URL(await bff.stepUpLoginUrl(stepUpResponse({
    error: 'insufficient_user_authentication', login_url: 'https://evil.example/login?acr_values=x',
  }), { returnUrl: '/' }));
  assert.equal(u.origin + u.pathname, `${ORIGIN}/bff/login`);
  assert.equal(u.searchParams.has('acr_values'), false);
  // The header alone suffices (a body that is not JSON).
  const headerOnly = new Response('not json', { status: 401, headers: { 'www-authenticate': CHALLENGE } });
  const fromHeader = new URL(await bff.stepUpLoginUrl(headerOnly, { returnUrl: '/' }));
  assert.equal(fromHeader.searchParams.get('acr_values'), 'urn:example:mfa');
  assert.equal(fromHeader.searchParams.get('max_age'), '600');
  bff.close();
});
