// Test page for testing/browser/client-e2e.mjs: the client as the gateway serves it, with
// every event recorded (browser clock, ms) for the script to check.
import { createBffClient } from '/bff/client.js';

const bff = createBffClient({ pollInterval: 1000, sessionExpiringBefore: 3000 });
const events = [];
for (const type of ['sessionEnded', 'sessionExpiring', 'userChanged']) {
  bff.addEventListener(type, (e) => {
    const d = e.detail;
    events.push({ type, at: Date.now(), sub: d.user?.sub ?? d.previous?.sub ?? null, expiresAt: d.expiresAt ?? null });
  });
}
window.bff = bff;
window.events = events;
window.ready = bff.user().then((u) => {
  document.getElementById('who').textContent = u ? u.claims.name : 'anonymous';
  return u;
});
