// @portcullis/bff-client: the browser side of a Duende.BFF-compatible backend-for-frontend
// (Portcullis or Duende.BFF). No dependencies; the gateway also serves this file at
// `{base}/client.js`. Types: index.d.ts. Tokens never reach the browser: this module only
// ever sees the claims `/bff/user` reports.

const SILENT_SOURCE = 'bff-silent-login';
const LOGOUT_URL = 'bff:logout_url';
const EXPIRES_IN = 'bff:session_expires_in';
const SESSION_STATE = 'bff:session_state';
// A failing poll waits pollInterval * 2^failures, at most this long.
const MAX_BACKOFF = 5 * 60_000;

// One automatic login navigation per page load, whatever the number of clients or 401s.
let loginNavigating = false;
globalThis.addEventListener?.('pageshow', (e) => {
  if (e.persisted) loginNavigating = false; // back from the bfcache: a new page load
});

function define(obj, key, value) {
  // defineProperty, not `obj[key] =`: a claim named `__proto__` stays a plain property
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/**
 * Turns a `/bff/user` body (an array of `{type, value}`) into a {@link BffUser}, or `null`
 * for an anonymous answer (`null`, an empty or non-array body).
 * @param {unknown} body
 * @param {number} [now] ms since the epoch, for `expiresAt`
 */
export function parseUser(body, now = Date.now()) {
  if (!Array.isArray(body) || body.length === 0) return null;
  const claims = {};
  const multi = new Set();
  const user = { claims, sub: undefined, sid: undefined, logoutUrl: undefined, expiresIn: undefined, expiresAt: undefined, sessionState: undefined };
  for (const c of body) {
    if (c === null || typeof c !== 'object' || typeof c.type !== 'string') continue;
    const { type, value } = c;
    if (type === LOGOUT_URL) user.logoutUrl = String(value);
    else if (type === EXPIRES_IN) {
      const s = Number(value);
      if (Number.isFinite(s)) {
        user.expiresIn = s;
        user.expiresAt = now + s * 1000;
      }
    } else if (type === SESSION_STATE) user.sessionState = value;
    else if (multi.has(type)) claims[type].push(value);
    else if (Object.hasOwn(claims, type)) {
      multi.add(type);
      claims[type] = [claims[type], value];
    } else define(claims, type, value);
  }
  user.sub = claims.sub;
  user.sid = claims.sid;
  return user;
}

/**
 * How long to wait before the next poll (ms).
 * @param {{interval: number, hiddenInterval: number, hidden: boolean, failures: number, expiresAt?: number, now: number}} s
 */
export function nextPollDelay({ interval, hiddenInterval, hidden, failures, expiresAt, now }) {
  let delay = hidden ? Math.max(interval, hiddenInterval) : interval;
  if (failures > 0) delay = Math.min(delay * 2 ** Math.min(failures, 16), Math.max(MAX_BACKOFF, delay));
  // Look again just after the session's end, so an expiry is noticed at once.
  if (!hidden && failures === 0 && expiresAt !== undefined) {
    delay = Math.min(delay, Math.max(0, expiresAt - now) + 500);
  }
  return delay;
}

/** Longest delay `setTimeout` honours (2^31 - 1 ms); longer ones fire at once. */
const MAX_TIMER_DELAY = 2 ** 31 - 1;

function sameUser(a, b) {
  if (!a || !b) return a === b;
  return a.logoutUrl === b.logoutUrl && JSON.stringify(a.claims) === JSON.stringify(b.claims);
}

/** The client; create it with {@link createBffClient}. An `EventTarget`. */
export class BffClient extends EventTarget {
  #o;
  #user; // undefined: not known yet; null: anonymous
  #loading = null;
  #pollTimer;
  #expiringTimer;
  #warnedFor = null; // expiresAt that sessionExpiring already fired for
  #failures = 0;
  #silent = null;
  #closed = false;
  #onVisibility = () => {
    if (this.#closed || !this.#o.pollInterval) return;
    if (globalThis.document?.visibilityState === 'visible') {
      if (this.#user) this.#poll();
    } else this.#schedule();
  };

  constructor(options = {}) {
    super();
    const here = globalThis.location?.origin;
    const origin = options.origin ? new URL(options.origin).origin : here;
    if (!origin) throw new TypeError('createBffClient: no `origin` option and no `location` to take it from');
    this.#o = {
      basePath: (options.basePath ?? '/bff').replace(/\/+$/, ''),
      header: options.antiForgery?.header ?? 'X-CSRF',
      value: options.antiForgery?.value ?? '1',
      origin,
      credentials: options.credentials ?? (origin === here ? 'same-origin' : 'include'),
      pollInterval: options.pollInterval ?? 5000,
      hiddenPollInterval: options.hiddenPollInterval ?? 60_000,
      sessionExpiringBefore: options.sessionExpiringBefore ?? 60_000,
      callbackPaths: options.callbackPaths ?? ['/signin-oidc', '/signout-callback-oidc'],
      onUnauthorized: options.onUnauthorized,
      fetch: options.fetch ?? ((...a) => globalThis.fetch(...a)),
    };
    for (const [name, fn] of [['sessionEnded', options.onSessionEnded], ['sessionExpiring', options.onSessionExpiring], ['userChanged', options.onUserChanged]]) {
      if (fn) this.addEventListener(name, (e) => fn(e.detail));
    }
    globalThis.document?.addEventListener?.('visibilitychange', this.#onVisibility);
  }

  #url(path) {
    return new URL(this.#o.basePath + path, this.#o.origin);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * `fetch` with the anti-forgery header and cookies for requests to the BFF's origin;
   * requests to any other origin go out untouched. A 401 from the BFF calls
   * `onUnauthorized` (default: one login navigation, when `/bff/user` confirms there is no
   * session).
   */
  fetch = async (input, init) => {
    init ??= {};
    const isRequest = typeof Request !== 'undefined' && input instanceof Request;
    // Relative URLs resolve as `fetch` resolves them: against the document's base URL (a
    // `<base href>` may point elsewhere), not against `location`.
    const base = globalThis.document?.baseURI ?? globalThis.location?.href ?? this.#o.origin;
    const url = new URL(isRequest ? input.url : String(input), base);
    if (url.origin !== this.#o.origin) return this.#o.fetch(input, init);
    const headers = new Headers(init.headers ?? (isRequest ? input.headers : undefined));
    headers.set(this.#o.header, this.#o.value);
    const credentials = init.credentials ?? (isRequest && input.credentials === 'omit' ? 'omit' : this.#o.credentials);
    const response = await this.#o.fetch(input, { ...init, headers, credentials });
    if (response.status === 401 && url.pathname !== this.#url('/user').pathname) {
      this.#unauthorized(url, response).catch((e) => {
        globalThis.console?.error?.('bff-client: onUnauthorized failed', e);
      });
    }
    return response;
  };

  async #unauthorized(url, response) {
    // Is the session gone, or did only this API refuse? A login helps only in the first case.
    const user = await this.#load(true).catch(() => undefined);
    // `sessionActive`: true or false when the BFF said so, `undefined` when it could not answer.
    const detail = { url: url.href, response, user: user ?? null, sessionActive: user === undefined ? undefined : user !== null };
    if (this.#o.onUnauthorized) return this.#o.onUnauthorized(detail);
    if (user === null && this.#mayNavigateToLogin()) this.login();
  }

  #mayNavigateToLogin() {
    // Never during a login: a navigation on its way, or a silent login in its iframe.
    if (loginNavigating || this.#silent || !globalThis.location) return false;
    const p = globalThis.location.pathname;
    const b = this.#o.basePath;
    const flowPages = [`${b}/login`, `${b}/silent-login`, `${b}/silent-login-callback`, ...this.#o.callbackPaths];
    return !flowPages.some((f) => p === f || p.startsWith(`${f}/`));
  }

  /**
   * The URL of `{base}/login` with `returnUrl` (default: the current route), `prompt`, and
   * for a step-up login `acrValues` (a string or an array, sent space-separated as
   * `acr_values`) and `maxAge` (seconds, as `max_age`).
   */
  loginUrl({
    returnUrl, prompt, acrValues, maxAge,
  } = {}) {
    const u = this.#url('/login');
    const loc = globalThis.location;
    const back = returnUrl ?? (loc ? loc.pathname + loc.search + loc.hash : '/');
    u.searchParams.set('returnUrl', back);
    if (prompt) u.searchParams.set('prompt', prompt);
    const acr = Array.isArray(acrValues) ? acrValues.join(' ') : acrValues;
    if (acr) u.searchParams.set('acr_values', acr);
    if (maxAge !== undefined && maxAge !== null) u.searchParams.set('max_age', String(maxAge));
    return u.href;
  }

  /**
   * For a step-up challenge (RFC 9470: a 401 whose `WWW-Authenticate` or JSON body says
   * `insufficient_user_authentication`, from a route's rule or an upstream API), the login
   * URL that answers it, with `returnUrl` (default: the current route); `null` for any other
   * response. Reads a clone of the body, so the caller can still read it. The URL always
   * points at the BFF's own login endpoint, whatever the body says.
   */
  async stepUpLoginUrl(response, { returnUrl } = {}) {
    if (!response || response.status !== 401) return null;
    const challenge = response.headers?.get?.('www-authenticate') ?? '';
    let body;
    try {
      body = await response.clone().json();
    } catch {
      body = undefined;
    }
    const isStepUp = body?.error === 'insufficient_user_authentication'
      || /(^|[\s,])error="insufficient_user_authentication"/.test(challenge);
    if (!isStepUp) return null;
    const given = typeof body?.login_url === 'string' ? new URL(body.login_url, this.#o.origin) : undefined;
    let acrValues;
    let maxAge;
    if (given?.origin === this.#o.origin) {
      acrValues = given.searchParams.get('acr_values') ?? undefined;
      maxAge = given.searchParams.get('max_age') ?? undefined;
    } else if (!given) {
      // No body from the gateway: the header's parameters.
      acrValues = /acr_values="([^"\\]*)"/.exec(challenge)?.[1];
      maxAge = /max_age=(\d+)/.exec(challenge)?.[1];
    }
    return this.loginUrl({ returnUrl, acrValues, maxAge });
  }

  /** Navigates to the login endpoint. */
  login(options = {}) {
    loginNavigating = true;
    globalThis.location.assign(this.loginUrl(options));
  }

  /** Navigates to the session's `bff:logout_url` (read fresh, so `sid` is never guessed). */
  async logout({ returnUrl } = {}) {
    const user = await this.#load(true).catch(() => this.#user);
    const u = new URL(user?.logoutUrl ?? this.#url('/logout').href, this.#o.origin);
    if (returnUrl !== undefined) u.searchParams.set('returnUrl', returnUrl);
    globalThis.location.assign(u.href);
  }

  /**
   * The current user, or `null` when anonymous. Cached; `refresh: true` asks the BFF again.
   * Rejects when the BFF cannot answer (e.g. 503): that is not "logged out".
   */
  user({ refresh = false } = {}) {
    if (!refresh && this.#user !== undefined) return Promise.resolve(this.#user);
    return this.#load(false);
  }

  /** The last known user without a request: `undefined` before the first answer. */
  get currentUser() {
    return this.#user;
  }

  #load(quiet) {
    // A sliding request (user({refresh: true})) must not be answered by a quiet poll in
    // flight, which would leave the session's idle timeout where it was.
    if (this.#loading && (quiet || !this.#loading.quiet)) return this.#loading.promise;
    const loading = {
      quiet,
      promise: this.#fetchUser(quiet).finally(() => {
        if (this.#loading === loading) this.#loading = null;
      }),
    };
    this.#loading = loading;
    return loading.promise;
  }

  async #fetchUser(quiet) {
    const u = this.#url('/user');
    if (quiet) u.searchParams.set('slide', 'false');
    const res = await this.#o.fetch(u.href, {
      headers: { [this.#o.header]: this.#o.value },
      credentials: this.#o.credentials,
      cache: 'no-store',
    });
    let user;
    if (res.status === 401) user = null;
    else if (res.ok) user = parseUser(await res.json());
    else throw Object.assign(new Error(`${u.pathname} answered ${res.status}`), { status: res.status });
    this.#failures = 0;
    this.#set(user);
    return user;
  }

  #set(user) {
    const previous = this.#user;
    this.#user = user;
    if (previous && !user) this.#emit('sessionEnded', { previous });
    if (previous === undefined || !sameUser(previous, user)) this.#emit('userChanged', { user, previous: previous ?? null });
    this.#armExpiring(user);
    this.#schedule();
  }

  #armExpiring(user) {
    clearTimeout(this.#expiringTimer);
    if (this.#closed) return;
    if (!user || user.expiresAt === undefined) {
      this.#warnedFor = null;
      return;
    }
    // expires_in is in whole seconds: expiresAt jitters by up to 1 s between polls. Warn
    // again only when the session was really extended.
    if (this.#warnedFor !== null && user.expiresAt <= this.#warnedFor + 2000) return;
    this.#warnedFor = null;
    const at = user.expiresAt;
    const fire = () => {
      const wait = at - this.#o.sessionExpiringBefore - Date.now();
      // setTimeout runs a delay above 2^31 - 1 ms (24.8 days) at once: wait in steps.
      if (wait > MAX_TIMER_DELAY) {
        this.#expiringTimer = setTimeout(fire, MAX_TIMER_DELAY);
        return;
      }
      this.#expiringTimer = setTimeout(() => {
        this.#warnedFor = at;
        this.#emit('sessionExpiring', { expiresAt: at, expiresIn: Math.max(0, Math.round((at - Date.now()) / 1000)) });
      }, Math.max(0, wait));
    };
    fire();
  }

  #schedule() {
    clearTimeout(this.#pollTimer);
    if (this.#closed || !this.#o.pollInterval || !this.#user) return;
    const delay = nextPollDelay({
      interval: this.#o.pollInterval,
      hiddenInterval: this.#o.hiddenPollInterval,
      hidden: globalThis.document?.visibilityState === 'hidden',
      failures: this.#failures,
      expiresAt: this.#user.expiresAt,
      now: Date.now(),
    });
    this.#pollTimer = setTimeout(() => this.#poll(), delay);
  }

  async #poll() {
    clearTimeout(this.#pollTimer);
    try {
      await this.#load(true); // reschedules through #set
    } catch {
      this.#failures++;
      this.#schedule();
    }
  }

  /**
   * A `prompt=none` login in a hidden iframe. Resolves `true` when the BFF now has a session,
   * `false` when not or when `timeout` (ms) passed; the iframe is always removed.
   */
  silentLogin({ timeout = 10_000 } = {}) {
    this.#silent ??= new Promise((resolve) => {
      const doc = globalThis.document;
      const frame = doc.createElement('iframe');
      frame.hidden = true;
      frame.setAttribute('aria-hidden', 'true');
      frame.setAttribute('tabindex', '-1');
      let timer;
      const done = (ok) => {
        clearTimeout(timer);
        globalThis.removeEventListener('message', onMessage);
        frame.remove();
        resolve(ok);
      };
      const onMessage = (e) => {
        if (e.origin !== this.#o.origin || e.source !== frame.contentWindow) return;
        if (e.data?.source === SILENT_SOURCE) done(e.data.isLoggedIn === true);
      };
      globalThis.addEventListener('message', onMessage);
      timer = setTimeout(() => done(false), timeout);
      frame.src = this.loginUrl({ prompt: 'none', returnUrl: '/' });
      doc.body.append(frame);
    })
      .then(async (ok) => {
        await this.#load(true).catch(() => {});
        return ok;
      })
      .finally(() => {
        this.#silent = null;
      });
    return this.#silent;
  }

  /** Stops polling and timers and removes the client's listeners. */
  close() {
    this.#closed = true;
    clearTimeout(this.#pollTimer);
    clearTimeout(this.#expiringTimer);
    globalThis.document?.removeEventListener?.('visibilitychange', this.#onVisibility);
  }
}

/**
 * Creates a client. Options (all optional): `basePath` ("/bff"), `antiForgery`
 * ({header: "X-CSRF", value: "1"}), `origin` (the BFF's, default the page's), `credentials`,
 * `pollInterval` (5000 ms, 0 = off), `hiddenPollInterval` (60000 ms), `sessionExpiringBefore`
 * (60000 ms), `callbackPaths`, `onUnauthorized`, `onSessionEnded`, `onSessionExpiring`,
 * `onUserChanged`, `fetch`.
 * @param {import('./index.js').BffClientOptions} [options]
 */
export function createBffClient(options) {
  return new BffClient(options);
}
