import { useEffect, useMemo, useState } from "preact/hooks";
import { ApiError, Session } from "./api";
import { href, parse, type Route } from "./route";
import { Overview } from "./pages/overview";
import { Devices } from "./pages/devices";
import { DevicePage, FollowPage } from "./pages/device";

/** The session the pages use; one per tab, in memory only. */
export const session = new Session();

export function App() {
  const [route, setRoute] = useState<Route>(parse(location.hash));
  const [user, setUser] = useState(session.user);
  const [ended, setEnded] = useState<string | null>(null);

  useEffect(() => {
    const on = () => setRoute(parse(location.hash));
    addEventListener("hashchange", on);
    session.onEnded = () => {
      // The page the person was on stays in the address: after logging in again they
      // are back where they were.
      setUser(null);
      setEnded("Your session has ended. Log in again to go on where you were.");
    };
    return () => removeEventListener("hashchange", on);
  }, []);

  useEffect(() => {
    const titles = { overview: "Overview", devices: "Devices", device: "Device", follow: "Following" };
    document.title = `${route.page === "device" ? route.name : titles[route.page]} · Outpost`;
    // A new page: focus its content, so a screen reader starts there and says where it is.
    document.getElementById("main")?.focus();
  }, [route]);

  if (!user) {
    return (
      <Login
        notice={ended}
        onIn={() => {
          setEnded(null);
          setUser(session.user);
        }}
      />
    );
  }
  return (
    <div class="shell">
      <a
        class="skip"
        href="#main"
        onClick={(e) => {
          // The hash is the page: moving focus must not change it.
          e.preventDefault();
          document.getElementById("main")?.focus();
        }}
      >
        Skip to content
      </a>
      <header class="bar">
        <span class="brand">Outpost</span>
        <nav aria-label="Main">
          <a href={href({ page: "overview" })} aria-current={route.page === "overview" ? "page" : undefined}>
            Overview
          </a>
          <a
            href={href({ page: "devices" })}
            aria-current={route.page === "overview" ? undefined : "page"}
          >
            Devices
          </a>
        </nav>
        <span class="who">
          {user.username} <span class="role">({user.role})</span>
        </span>
        <button
          type="button"
          onClick={async () => {
            await session.logout();
            setUser(null);
          }}
        >
          Log out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        {route.page === "overview" && <Overview />}
        {route.page === "devices" && <Devices />}
        {route.page === "device" && <DevicePage key={route.name} name={route.name} />}
        {route.page === "follow" && <FollowPage key={route.names.join(",")} names={route.names} />}
      </main>
    </div>
  );
}

function Login({ notice, onIn }: { notice: string | null; onIn: () => void }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const id = useMemo(() => Math.random().toString(36).slice(2), []);
  return (
    <main class="login" id="main">
      <h1>Outpost</h1>
      {notice && (
        <p class="notice" role="status">
          {notice}
        </p>
      )}
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          const f = new FormData(e.currentTarget);
          setBusy(true);
          setError(null);
          try {
            await session.login(String(f.get("username") ?? ""), String(f.get("password") ?? ""));
            onIn();
          } catch (err) {
            setError(err instanceof ApiError ? err.message : "the node did not answer");
          } finally {
            setBusy(false);
          }
        }}
      >
        <label for={`u-${id}`}>User name</label>
        <input id={`u-${id}`} name="username" autocomplete="username" required />
        <label for={`p-${id}`}>Password</label>
        <input id={`p-${id}`} name="password" type="password" autocomplete="current-password" required />
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          Log in
        </button>
      </form>
    </main>
  );
}
