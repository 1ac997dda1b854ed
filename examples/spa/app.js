// Sample SPA for a Duende.BFF-compatible backend-for-frontend (Portcullis or Duende.BFF).
// It uses the browser client the gateway serves at /bff/client.js (clients/js/ in this
// repository, npm `@portcullis/bff-client`): every BFF call carries `X-CSRF: 1`, the session
// is polled (without extending it), and the page reacts when it ends or is about to.
// The browser holds only the BFF's HttpOnly session cookie.

// The path the page is served under: '' at the root, '/admin' for a frontend mapped to /admin
// (the gateway's endpoints and routes of that frontend live below it).
const BASE = new URL('.', import.meta.url).pathname.replace(/\/$/, '');
const { createBffClient } = await import(`${BASE}/bff/client.js`);

const $ = (id) => document.getElementById(id);
const bff = createBffClient({
  basePath: `${BASE}/bff`,
  sessionExpiringBefore: 60_000,
  onSessionEnded: () => {
    $('ended').hidden = false;
  },
  onSessionExpiring: () => {
    $('expiring').hidden = false;
  },
});

function show(user) {
  $('status').textContent = '';
  $('anonymous').hidden = user !== null;
  $('authenticated').hidden = user === null;
  $('expiring').hidden = true;
  if (user === null) return;
  $('ended').hidden = true;
  const name = user.claims.name ?? user.sub ?? '(unknown)';
  $('user-name').textContent = Array.isArray(name) ? name.join(', ') : name;
  $('session-expires-in').textContent = user.expiresIn === undefined ? 'unknown' : String(user.expiresIn);
  $('logout').href = user.logoutUrl ?? `${BASE}/bff/logout`;
  const rows = Object.entries(user.claims).map(([type, value]) => {
    const row = document.createElement('tr');
    for (const text of [type, typeof value === 'string' ? value : JSON.stringify(value)]) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  $('claims').tBodies[0].replaceChildren(...rows);
}

async function callApi() {
  const out = $('api-result');
  out.classList.remove('error');
  out.textContent = 'Calling /api/whoami…';
  try {
    // A 401 here (session gone) sends the browser to the login page once, and back here.
    const res = await bff.fetch(`${BASE}/api/whoami`);
    const text = await res.text();
    if (!res.ok) throw new Error(`HTTP ${res.status}${text ? `: ${text}` : ''}`);
    const data = JSON.parse(text);
    out.textContent = `sub: ${data.sub}\nscope: ${data.scope ?? ''}\nclient_id: ${data.client_id ?? ''}`;
  } catch (err) {
    out.classList.add('error');
    out.textContent = `API call failed: ${err.message}`;
  }
}

$('login').href = bff.loginUrl({ returnUrl: `${BASE}/` });
$('call-api').addEventListener('click', callApi);
$('logout').addEventListener('click', (e) => {
  e.preventDefault();
  bff.logout({ returnUrl: `${BASE}/` });
});
// "Stay signed in": any request that is not a poll extends the idle timeout.
$('stay').addEventListener('click', async () => {
  await bff.user({ refresh: true }).catch(() => {});
  $('expiring').hidden = true;
});
bff.addEventListener('userChanged', (e) => show(e.detail.user));
bff.user().catch((err) => {
  $('status').textContent = `Session check failed: ${err.message}`;
});
