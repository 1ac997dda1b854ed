// Sample SPA for a Duende.BFF-compatible backend-for-frontend (Portcullis or Duende.BFF).
// The browser holds only the BFF's HttpOnly session cookie; every call carries `X-CSRF: 1`.

const CSRF = { 'X-CSRF': '1' };
// The path the page is served under: '' at the root, '/admin' for a frontend mapped to /admin
// (the gateway's endpoints and routes of that frontend live below it).
const BASE = new URL('.', document.currentScript?.src ?? document.baseURI).pathname.replace(/\/$/, '');
const $ = (id) => document.getElementById(id);

function claimValue(claims, type) {
  const claim = claims.find((c) => c.type === type);
  return claim === undefined ? undefined : claim.value;
}

async function loadUser() {
  let res;
  try {
    res = await fetch(`${BASE}/bff/user`, { headers: CSRF, credentials: 'same-origin' });
  } catch (err) {
    $('status').textContent = `Cannot reach the BFF: ${err.message}`;
    return;
  }
  if (res.status === 401) {
    $('status').textContent = '';
    $('anonymous').hidden = false;
    return;
  }
  if (!res.ok) {
    $('status').textContent = `Session check failed: HTTP ${res.status}`;
    return;
  }
  const claims = (await res.json()) ?? [];
  if (!Array.isArray(claims) || claims.length === 0) {
    // some BFFs answer 200 with `null` for anonymous users
    $('status').textContent = '';
    $('anonymous').hidden = false;
    return;
  }
  showUser(claims);
}

function showUser(claims) {
  $('status').textContent = '';
  $('user-name').textContent = claimValue(claims, 'name') ?? claimValue(claims, 'sub') ?? '(unknown)';
  const expiresIn = claimValue(claims, 'bff:session_expires_in');
  $('session-expires-in').textContent = expiresIn === undefined ? 'unknown' : String(expiresIn);
  $('logout').href = claimValue(claims, 'bff:logout_url') ?? `${BASE}/bff/logout`;

  const body = $('claims').tBodies[0];
  body.replaceChildren(...claims.map(({ type, value }) => {
    const row = document.createElement('tr');
    for (const text of [type, typeof value === 'string' ? value : JSON.stringify(value)]) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  $('authenticated').hidden = false;
}

async function callApi() {
  const out = $('api-result');
  out.classList.remove('error');
  out.textContent = 'Calling /api/whoami…';
  try {
    const res = await fetch(`${BASE}/api/whoami`, { headers: CSRF, credentials: 'same-origin' });
    const text = await res.text();
    if (!res.ok) {
      throw new Error(`HTTP ${res.status}${text ? `: ${text}` : ''}`);
    }
    const data = JSON.parse(text);
    out.textContent = `sub: ${data.sub}\nscope: ${data.scope ?? ''}\nclient_id: ${data.client_id ?? ''}`;
  } catch (err) {
    out.classList.add('error');
    out.textContent = `API call failed: ${err.message}`;
  }
}

$('login').href = `${BASE}/bff/login?returnUrl=${encodeURIComponent(`${BASE}/`)}`;
$('call-api').addEventListener('click', callApi);
loadUser();
