// The gateway's API as the console uses it: one session, its tokens kept in memory only
// (never in localStorage or a readable cookie), refreshed before they expire; every call
// through the gateway with the access token, the EdgeX error message surfaced as is.

export type Role = "viewer" | "operator" | "admin";

export interface Tokens {
  accessToken: string;
  refreshToken: string;
  expiresIn: number;
  username: string;
  role: Role;
}

/** A refused or failed call: the HTTP status and the message the service gave. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The session ended (expired, logged out elsewhere): the person must log in again. */
export class SessionEnded extends Error {}

/** The message of an EdgeX error body, or what the status says. */
export function messageOf(status: number, body: unknown): string {
  if (body && typeof body === "object" && "message" in body) {
    const m = (body as { message: unknown }).message;
    if (typeof m === "string" && m.length > 0) return m;
  }
  if (status === 0) return "the node did not answer";
  return `the node answered ${status}`;
}

/** When to refresh a token that lives `expiresIn` seconds: a minute before it expires, not
 * before halfway, and never sooner than in 5 s. Milliseconds from now. */
export function refreshDelay(expiresIn: number): number {
  const s = Math.max(5, expiresIn - 60, expiresIn / 2);
  return Math.round(s * 1000);
}

type Fetch = typeof fetch;

/** Answers the gateway served from its cache because the service did not answer
 * (`Warning: 110`), with their age in seconds. */
const staleAnswers = new WeakMap<object, number>();

/** How old `body` was when it came, if the gateway served it stale; null if it is fresh. */
export function staleAge(body: unknown): number | null {
  return body !== null && typeof body === "object" ? (staleAnswers.get(body) ?? null) : null;
}

/** The age of a stale answer from its headers, or null for a fresh one. */
export function staleOf(headers: Headers): number | null {
  if (!/^\s*110\b/.test(headers.get("warning") ?? "")) return null;
  const age = Number(headers.get("age") ?? "0");
  return Number.isFinite(age) && age >= 0 ? age : 0;
}

export class Session {
  private tokens: Tokens | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private refreshing: Promise<boolean> | null = null;
  /** Who waits for the next login (work that paused when the session ended). */
  private waiters: (() => void)[] = [];
  /** Called once when the session ends by itself (the refresh token refused). */
  onEnded: () => void = () => {};

  constructor(
    private readonly base = "",
    private readonly fetcher: Fetch = (...a) => fetch(...a),
  ) {}

  /** Resolves once someone is logged in: now, or at the next login. */
  whenIn(): Promise<void> {
    if (this.tokens) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  get user(): { username: string; role: Role } | null {
    return this.tokens ? { username: this.tokens.username, role: this.tokens.role } : null;
  }

  /** Whether the user may change things (send write commands, roll out firmware). */
  get canWrite(): boolean {
    return this.tokens !== null && this.tokens.role !== "viewer";
  }

  async login(username: string, password: string): Promise<void> {
    const r = await this.fetcher(`${this.base}/api/v3/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username, password }),
    });
    const body = await r.json().catch(() => null);
    if (!r.ok) throw new ApiError(r.status, messageOf(r.status, body));
    this.take(body as Tokens);
  }

  async logout(): Promise<void> {
    const t = this.tokens;
    this.clear();
    if (!t) return;
    await this.fetcher(`${this.base}/api/v3/auth/logout`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${t.accessToken}`,
        "content-type": "application/json",
      },
      body: JSON.stringify({ refreshToken: t.refreshToken }),
    }).catch(() => undefined);
  }

  /** A call through the gateway: `path` is the gateway's (`/core-data/api/v3/...`). A 401
   * is answered by one refresh and one retry; after that the session has ended. */
  async call<T = unknown>(path: string, init: RequestInit = {}): Promise<T> {
    const r = await this.raw(path, init);
    const text = await r.text();
    let body: unknown = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = text;
    }
    if (!r.ok) throw new ApiError(r.status, messageOf(r.status, body));
    const stale = staleOf(r.headers);
    if (stale !== null && body !== null && typeof body === "object") staleAnswers.set(body, stale);
    return body as T;
  }

  /** The response itself (for streams), with the same refresh-and-retry. */
  async raw(path: string, init: RequestInit = {}): Promise<Response> {
    if (!this.tokens) throw new SessionEnded("not logged in");
    let r = await this.send(path, init);
    if (r.status === 401) {
      if (!(await this.refresh())) {
        // The refresh did not go through but the session stands (the node did not
        // answer): an error to show, not an end.
        if (this.tokens) throw new ApiError(0, messageOf(0, null));
        throw new SessionEnded("the session expired");
      }
      r = await this.send(path, init);
      if (r.status === 401) {
        this.end();
        throw new SessionEnded("the session expired");
      }
    }
    return r;
  }

  private send(path: string, init: RequestInit): Promise<Response> {
    const headers = new Headers(init.headers);
    headers.set("authorization", `Bearer ${this.tokens?.accessToken ?? ""}`);
    if (init.body && !(init.body instanceof FormData) && !headers.has("content-type")) headers.set("content-type", "application/json");
    return this.fetcher(`${this.base}${path}`, { ...init, headers }).catch(() => {
      throw new ApiError(0, messageOf(0, null));
    });
  }

  /** Trades the refresh token for new tokens; false (and the session ended) when refused. */
  refresh(): Promise<boolean> {
    if (this.refreshing) return this.refreshing;
    const t = this.tokens;
    if (!t) return Promise.resolve(false);
    this.refreshing = (async () => {
      try {
        const r = await this.fetcher(`${this.base}/api/v3/auth/refresh`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ refreshToken: t.refreshToken }),
        });
        if (r.status === 400 || r.status === 401) {
          // The refresh token was refused: the session is over.
          if (this.tokens === t) this.end();
          return false;
        }
        if (!r.ok) return false;
        const next = (await r.json()) as Tokens;
        // Logged out (or in again) meanwhile: these tokens are not this session's.
        if (this.tokens !== t) return false;
        this.take(next);
        return true;
      } catch {
        // The node did not answer: the tokens stay; the next call tries again.
        return false;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  private take(t: Tokens) {
    this.tokens = t;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.refresh(), refreshDelay(t.expiresIn));
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) w();
  }

  private clear() {
    this.tokens = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private end() {
    const had = this.tokens !== null;
    this.clear();
    if (had) this.onEnded();
  }
}

/** EdgeX answers a list of requests with 207 and one status per item: the first item
 * refused, as an error, or nothing when every item went through. */
export function refusedItem(body: unknown): ApiError | null {
  if (!Array.isArray(body)) return null;
  for (const item of body) {
    const code = item && typeof item === "object" ? (item as { statusCode?: unknown }).statusCode : undefined;
    if (typeof code === "number" && code >= 400) return new ApiError(code, messageOf(code, item));
  }
  return null;
}
