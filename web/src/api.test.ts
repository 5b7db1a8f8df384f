import { describe, expect, it } from "vitest";
import { ApiError, Session, SessionEnded, messageOf, refreshDelay, staleAge, staleOf } from "./api";

/** A fetch answering from `routes` (path -> handler), recording the calls. */
function fake(routes: Record<string, (init: RequestInit) => [number, unknown]>) {
  const calls: { path: string; auth: string | null }[] = [];
  const f = async (input: RequestInfo | URL, init: RequestInit = {}) => {
    const path = String(input);
    calls.push({ path, auth: new Headers(init.headers).get("authorization") });
    const h = routes[path];
    if (!h) return new Response("{}", { status: 404 });
    const [status, body] = h(init);
    return new Response(JSON.stringify(body), { status });
  };
  return { f: f as typeof fetch, calls };
}

const tokens = (n: number) => ({
  accessToken: `a${n}`,
  refreshToken: `r${n}`,
  expiresIn: 900,
  username: "ann",
  role: "viewer",
});

describe("Session", () => {
  it("refreshes once on a 401 and retries with the new token", async () => {
    let n = 0;
    const { f, calls } = fake({
      "/api/v3/auth/login": () => [200, tokens(1)],
      "/api/v3/auth/refresh": () => [200, tokens(2)],
      "/core-data/api/v3/ping": (init) =>
        new Headers(init.headers).get("authorization") === "Bearer a2" ? [200, { ok: ++n }] : [401, {}],
    });
    const s = new Session("", f);
    await s.login("ann", "pw");
    expect(s.canWrite).toBe(false);
    expect(await s.call("/core-data/api/v3/ping")).toEqual({ ok: 1 });
    expect(calls.map((c) => c.path)).toEqual([
      "/api/v3/auth/login",
      "/core-data/api/v3/ping",
      "/api/v3/auth/refresh",
      "/core-data/api/v3/ping",
    ]);
    await s.logout();
  });

  it("ends the session when the refresh is refused, once", async () => {
    const { f } = fake({
      "/api/v3/auth/login": () => [200, tokens(1)],
      "/api/v3/auth/refresh": () => [401, { message: "refresh token expired" }],
      "/x": () => [401, {}],
    });
    const s = new Session("", f);
    let ended = 0;
    s.onEnded = () => ended++;
    await s.login("ann", "pw");
    await expect(s.call("/x")).rejects.toBeInstanceOf(SessionEnded);
    expect(ended).toBe(1);
    expect(s.user).toBeNull();
    await expect(s.call("/x")).rejects.toBeInstanceOf(SessionEnded);
    expect(ended).toBe(1);
  });

  it("surfaces the service's own error message", async () => {
    const { f } = fake({
      "/api/v3/auth/login": () => [200, { ...tokens(1), role: "operator" }],
      "/core-command/api/v3/device/name/d/set": () => [400, { message: "value 300 out of range for Uint8" }],
    });
    const s = new Session("", f);
    await s.login("ann", "pw");
    expect(s.canWrite).toBe(true);
    const e = await s.call("/core-command/api/v3/device/name/d/set", { method: "PUT", body: "{}" }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ status: 400, message: "value 300 out of range for Uint8" });
  });

  it("says why a login failed", async () => {
    const { f } = fake({ "/api/v3/auth/login": () => [401, { message: "wrong user name or password" }] });
    const s = new Session("", f);
    await expect(s.login("ann", "no")).rejects.toThrow("wrong user name or password");
  });
});

describe("Session under failures", () => {
  it("keeps the session when the refresh meets a node that is down", async () => {
    let down = false;
    const { f } = fake({
      "/api/v3/auth/login": () => [200, tokens(1)],
      "/api/v3/auth/refresh": () => (down ? [503, {}] : [200, tokens(2)]),
      "/x": (init) => (new Headers(init.headers).get("authorization") === "Bearer a2" ? [200, {}] : [401, {}]),
    });
    const s = new Session("", f);
    await s.login("ann", "pw");
    down = true;
    await expect(s.call("/x")).rejects.toBeInstanceOf(ApiError);
    expect(s.user).not.toBeNull();
    down = false;
    expect(await s.call("/x")).toEqual({});
  });
});

describe("helpers", () => {
  it("refreshes a minute early, at least halfway, not sooner than 5 s", () => {
    expect(refreshDelay(900)).toBe(840_000);
    expect(refreshDelay(60)).toBe(30_000);
    expect(refreshDelay(4)).toBe(5_000);
  });

  it("takes the message of an EdgeX error body", () => {
    expect(messageOf(404, { apiVersion: "v3", message: "no device d", statusCode: 404 })).toBe("no device d");
    expect(messageOf(503, "<html>")).toBe("the node answered 503");
    expect(messageOf(0, null)).toBe("the node did not answer");
  });
});

describe("stale answers", () => {
  it("are told from the gateway's Warning 110 and Age", () => {
    expect(staleOf(new Headers({ warning: '110 - "Response is Stale"', age: "42" }))).toBe(42);
    expect(staleOf(new Headers({ warning: "110 - x" }))).toBe(0);
    expect(staleOf(new Headers({ age: "42", "x-cache": "HIT" }))).toBeNull();
    expect(staleOf(new Headers({ warning: '199 - "other"' }))).toBeNull();
  });

  it("carry their age to whoever loaded them", async () => {
    const f = (async (input: RequestInfo | URL) => {
      const path = String(input);
      if (path === "/api/v3/auth/login") return new Response(JSON.stringify(tokens(1)));
      const headers = path === "/old" ? { warning: '110 - "Response is Stale"', age: "90" } : undefined;
      return new Response(JSON.stringify({ devices: [] }), { headers });
    }) as typeof fetch;
    const s = new Session("", f);
    await s.login("ann", "pw");
    expect(staleAge(await s.call("/old"))).toBe(90);
    expect(staleAge(await s.call("/new"))).toBeNull();
  });
});

describe("work waiting for a login", () => {
  it("goes on at the next login after the session ended", async () => {
    let refused = false;
    const { f } = fake({
      "/api/v3/auth/login": () => [200, tokens(1)],
      "/api/v3/auth/refresh": () => [401, { message: "expired" }],
      "/x": () => (refused ? [401, {}] : [200, {}]),
    });
    const s = new Session("", f);
    await s.login("ann", "pw");
    await s.whenIn();
    refused = true;
    await expect(s.call("/x")).rejects.toBeInstanceOf(SessionEnded);
    let resumed = false;
    const waiting = s.whenIn().then(() => (resumed = true));
    await Promise.resolve();
    expect(resumed).toBe(false);
    refused = false;
    await s.login("ann", "pw");
    await waiting;
    expect(resumed).toBe(true);
  });
});
