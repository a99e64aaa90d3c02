// The console's HTTP side: signing in, keeping the access token fresh, and
// calling the REST API (docs/protocol.md section 8) with it.

import { SignedOut } from "../notifications/client.js";

export { SignedOut };

// The refresh token lives in sessionStorage: a reload keeps the user signed
// in, closing the tab signs them out. The access token lives only in memory.
const REFRESH_KEY = "console.refresh";

// An error the API answered with: `code` and `detail` as the server gave them.
export class ApiError extends Error {
  constructor(status, body) {
    super(ApiError.describe(body) || `The server answered ${status}.`);
    this.status = status;
    this.code = body?.code ?? null;
    this.body = body;
  }

  static describe(body) {
    if (!body) return "";
    if (typeof body.detail === "string") return body.detail;
    // DRF field errors: {"field": ["message", ...]} or {"detail": {"field": [...]}}.
    const fields = typeof body.detail === "object" && body.detail ? body.detail : body;
    return Object.entries(fields)
      .filter(([key]) => key !== "code")
      .map(([key, messages]) => `${key}: ${[].concat(messages).join(" ")}`)
      .join("; ");
  }
}

// Read a JWT's payload. The token is only decoded to learn its lifetime;
// the server is what verifies it.
function claims(token) {
  const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
}

async function request(method, path, { body, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", // the API authenticates with the bearer token only
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { detail: text.slice(0, 200) };
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

export class Session {
  // onAccess(token) is called with every new access token (to re-auth the socket);
  // onSignedOut() when the session ends for any reason.
  constructor({ onAccess = () => {}, onSignedOut = () => {}, storage = window.sessionStorage } = {}) {
    Object.assign(this, { onAccess, onSignedOut, storage });
    this.access = null;
    this.accessExpiresAt = 0; // local clock, ms
    this.refreshTimer = null;
    this.refreshing = null;
    this.generation = 0; // bumped when the session ends; late answers for an older one are dropped
  }

  get signedIn() {
    return Boolean(this.storage.getItem(REFRESH_KEY));
  }

  async login(username, password) {
    const generation = this.generation;
    const tokens = await request("POST", "/api/auth/token/", { body: { username, password } });
    if (generation !== this.generation) throw new SignedOut("Signed out meanwhile.");
    this.storage.setItem(REFRESH_KEY, tokens.refresh);
    this.setAccess(tokens.access);
  }

  // End the session here and on the server (the refresh token is blacklisted).
  async logout() {
    const refresh = this.storage.getItem(REFRESH_KEY);
    this.clear();
    if (refresh) {
      try {
        await request("POST", "/api/auth/token/blacklist/", { body: { refresh } });
      } catch {
        // Already invalid or unreachable: the local session is gone either way.
      }
    }
  }

  clear() {
    this.generation += 1;
    clearTimeout(this.refreshTimer);
    this.storage.removeItem(REFRESH_KEY);
    this.access = null;
    this.accessExpiresAt = 0;
    this.onSignedOut();
  }

  // A valid access token; refreshes first if this one is (nearly) expired or
  // the server refused it. Throws SignedOut when the session cannot go on.
  async token({ fresh = false } = {}) {
    if (!fresh && this.access && Date.now() < this.accessExpiresAt - this.marginMs) return this.access;
    return this.refresh();
  }

  refresh() {
    // Concurrent callers share one refresh request.
    this.refreshing ??= this.doRefresh().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  async doRefresh() {
    const refresh = this.storage.getItem(REFRESH_KEY);
    if (!refresh) throw new SignedOut("Not signed in.");
    const generation = this.generation;
    let tokens;
    try {
      tokens = await request("POST", "/api/auth/token/refresh/", { body: { refresh } });
    } catch (error) {
      if (generation !== this.generation) throw new SignedOut("Signed out meanwhile.");
      if (error instanceof ApiError && error.status === 401) {
        this.clear();
        throw new SignedOut("The session expired.");
      }
      throw error;
    }
    // A refresh that was under way when the user logged out must not sign them back in.
    if (generation !== this.generation) throw new SignedOut("Signed out meanwhile.");
    this.setAccess(tokens.access);
    this.onAccess(tokens.access);
    return tokens.access;
  }

  setAccess(token) {
    const { exp, iat } = claims(token);
    // Measure the lifetime with the server's own clock (exp - iat), then
    // count it on ours, so a skewed client clock does not matter. Both are
    // whole seconds, so up to one second of it may already be gone.
    const lifetimeMs = Math.max(0.5, exp - iat - 1) * 1000;
    this.access = token;
    this.accessExpiresAt = Date.now() + lifetimeMs;
    // A token this close to expiry is not worth sending: it could lapse on the way.
    this.marginMs = Math.min(5000, lifetimeMs / 10);
    // Refresh ahead of expiry: a fifth of the lifetime early, at most a minute.
    const earlyMs = Math.min(60000, lifetimeMs / 5);
    this.scheduleRefresh(Math.max(0, lifetimeMs - earlyMs));
  }

  scheduleRefresh(delayMs) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refresh().catch((error) => {
        if (error instanceof SignedOut) return; // the session is over
        // The server is unreachable for now: try again while the token lasts.
        const left = this.accessExpiresAt - Date.now();
        if (left > 0) this.scheduleRefresh(Math.min(5000, left / 2));
      });
    }, delayMs);
  }

  // Call the API with the access token, refreshing it once if the server refuses it.
  async call(method, path, body) {
    try {
      return await request(method, path, { body, token: await this.token() });
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      return request(method, path, { body, token: await this.token({ fresh: true }) });
    }
  }
}
