// Types of @portcullis/bff-client (src/index.js).

/** A claim value as `/bff/user` reports it; a claim that occurs more than once becomes an array. */
export type ClaimValue = string | number | boolean | null | object;

/** The logged-in user, from `GET {base}/user`. */
export interface BffUser {
  /** Every claim of the session except the `bff:*` ones; multi-valued claims as arrays, in order. */
  claims: Record<string, ClaimValue | ClaimValue[]>;
  /** `claims.sub`. */
  sub: string | undefined;
  /** `claims.sid`: the IdP's session id (OpenID Connect Front/Back-Channel Logout). */
  sid: string | undefined;
  /** `bff:logout_url`: the logout endpoint with the session's `sid` (relative to the BFF's origin). */
  logoutUrl: string | undefined;
  /** `bff:session_expires_in`: seconds until the session ends when idle, as of the answer. */
  expiresIn: number | undefined;
  /** When the session ends if idle: ms since the epoch (`Date.now()` at the answer + `expiresIn`). */
  expiresAt: number | undefined;
  /** `bff:session_state`, when the IdP returned one. */
  sessionState: string | undefined;
}

/** What `onUnauthorized` receives after a 401 from the BFF. */
export interface UnauthorizedDetail {
  /** The request's absolute URL. */
  url: string;
  /** The 401 response (its body may already be read by the caller). */
  response: Response;
  /** The user per a fresh `/bff/user?slide=false`; null when the session is gone or unknown. */
  user: BffUser | null;
  /**
   * Whether the session still exists (then only this API refused: a login would not help);
   * `undefined` when the BFF could not answer (e.g. 503).
   */
  sessionActive: boolean | undefined;
}

export interface BffClientOptions {
  /** Management base path. Default "/bff". */
  basePath?: string;
  /** Anti-forgery header. Default `{ header: "X-CSRF", value: "1" }`. */
  antiForgery?: { header?: string; value?: string };
  /** The BFF's origin when it is not the page's (split-origin; needs CORS with credentials on the BFF). */
  origin?: string;
  /** `credentials` for BFF requests. Default "same-origin", or "include" when `origin` is another origin. */
  credentials?: RequestCredentials;
  /** Session polling interval while logged in and visible, ms. Default 5000; 0 turns polling off. */
  pollInterval?: number;
  /** Polling interval while the tab is hidden, ms. Default 60000. */
  hiddenPollInterval?: number;
  /** `sessionExpiring` fires this long (ms) before the session's idle end. Default 60000. */
  sessionExpiringBefore?: number;
  /** Paths of the OIDC callbacks; no automatic login navigation starts from them. Default ["/signin-oidc", "/signout-callback-oidc"]. */
  callbackPaths?: string[];
  /** Called after a 401 from the BFF instead of the default (one login navigation per page load when the session is gone). */
  onUnauthorized?: (detail: UnauthorizedDetail) => void;
  /** Listener for `sessionEnded`. */
  onSessionEnded?: (detail: SessionEndedDetail) => void;
  /** Listener for `sessionExpiring`. */
  onSessionExpiring?: (detail: SessionExpiringDetail) => void;
  /** Listener for `userChanged`. */
  onUserChanged?: (detail: UserChangedDetail) => void;
  /** The underlying fetch. Default `globalThis.fetch`. */
  fetch?: typeof fetch;
}

export interface SessionEndedDetail {
  /** The user whose session ended. */
  previous: BffUser;
}
export interface SessionExpiringDetail {
  /** When the session ends if idle, ms since the epoch. */
  expiresAt: number;
  /** Seconds left. */
  expiresIn: number;
}
export interface UserChangedDetail {
  user: BffUser | null;
  previous: BffUser | null;
}

export interface BffClientEventMap {
  /** A logged-in session became anonymous (logout elsewhere, back-channel logout, expiry). */
  sessionEnded: CustomEvent<SessionEndedDetail>;
  /** The session ends in `sessionExpiringBefore` ms unless the user is active. Once per expiry time. */
  sessionExpiring: CustomEvent<SessionExpiringDetail>;
  /** The first answer, and every change of user or claims. */
  userChanged: CustomEvent<UserChangedDetail>;
}

export declare class BffClient extends EventTarget {
  constructor(options?: BffClientOptions);
  /** `fetch` with the anti-forgery header and cookies on BFF requests; other origins untouched. */
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  /** The current user or null when anonymous; cached unless `refresh`. Rejects when the BFF cannot answer. */
  user(options?: { refresh?: boolean }): Promise<BffUser | null>;
  /** The last known user without a request; undefined before the first answer. */
  readonly currentUser: BffUser | null | undefined;
  /** The login endpoint's URL. `returnUrl` defaults to the current route; `acrValues`/`maxAge` make it a step-up login (RFC 9470). */
  loginUrl(options?: { returnUrl?: string; prompt?: string; acrValues?: string | string[]; maxAge?: number | string }): string;
  /** For a step-up challenge (401 `insufficient_user_authentication`), the login URL that answers it; otherwise null. */
  stepUpLoginUrl(response: Response, options?: { returnUrl?: string }): Promise<string | null>;
  /** Navigates to the login endpoint. */
  login(options?: { returnUrl?: string; prompt?: string }): void;
  /** Navigates to the session's `bff:logout_url` (plus `returnUrl`). */
  logout(options?: { returnUrl?: string }): Promise<void>;
  /** `prompt=none` login in a hidden iframe; true when a session now exists. Default timeout 10000 ms. */
  silentLogin(options?: { timeout?: number }): Promise<boolean>;
  /** Stops polling and timers. */
  close(): void;
  addEventListener<K extends keyof BffClientEventMap>(type: K, listener: (ev: BffClientEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof BffClientEventMap>(type: K, listener: (ev: BffClientEventMap[K]) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/** Creates a client. */
export declare function createBffClient(options?: BffClientOptions): BffClient;

/** A `/bff/user` body → BffUser, or null when anonymous. */
export declare function parseUser(body: unknown, now?: number): BffUser | null;

/** Delay before the next poll, ms. */
export declare function nextPollDelay(state: {
  interval: number;
  hiddenInterval: number;
  hidden: boolean;
  failures: number;
  expiresAt?: number;
  now: number;
}): number;
