import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError, Session } from "./api";
import { SECTIONS, href, parse, section, type Route } from "./route";
import { Overview } from "./pages/overview";
import { Devices } from "./pages/devices";
import { DevicePage, FollowPage } from "./pages/device";
import { lazy } from "./lazy";

// Pages that are not the first one come with their own code, when first opened.
const Profiles = lazy(() => import("./pages/profiles").then((m) => m.Profiles));
const DataFlow = lazy(() => import("./pages/data").then((m) => m.DataFlow));
const Firmware = lazy(() => import("./pages/firmware").then((m) => m.Firmware));
const Access = lazy(() => import("./pages/access").then((m) => m.Access));

/** The session the pages use; one per tab, in memory only. */
export const session = new Session();

export function App() {
  const [route, setRoute] = useState<Route>(parse(location.hash));
  // Whose pages are shown: kept while a session that ended is renewed, so nothing typed
  // or chosen on the page is lost; gone at a logout.
  const [user, setUser] = useState(session.user);
  const [ended, setEnded] = useState<string | null>(null);
  /** What had the focus when the session ended (the pages go inert under the login). */
  const returnTo = useRef<Element | null>(null);

  useEffect(() => {
    const on = () => setRoute(parse(location.hash));
    addEventListener("hashchange", on);
    session.onEnded = () => {
      returnTo.current = document.activeElement;
      setEnded("Your session has ended. Log in again to go on where you were.");
    };
    return () => removeEventListener("hashchange", on);
  }, []);

  // Logged in again: the focus goes back to where it was, if that is still on the page.
  useEffect(() => {
    if (ended !== null) return;
    const back = returnTo.current;
    returnTo.current = null;
    if (back instanceof HTMLElement && back.isConnected) back.focus();
  }, [ended]);

  useEffect(() => {
    const title =
      route.page === "device"
        ? route.name
        : route.page === "follow"
          ? "Following"
          : SECTIONS.find((s) => s.page === route.page)?.title;
    document.title = `${title} · Outpost`;
    // A new page: focus its content, so a screen reader starts there and says where it is.
    document.getElementById("main")?.focus();
  }, [route]);

  if (!user) {
    return <Login notice={null} onIn={() => setUser(session.user)} />;
  }
  return (
    <>
      <div class="shell" inert={ended !== null}>
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
            {SECTIONS.filter((s) => s.page !== "access" || user.role === "admin").map((s) => (
              <a
                key={s.page}
                href={href({ page: s.page } as Route)}
                aria-current={section(route) === s.page ? "page" : undefined}
              >
                {s.title}
              </a>
            ))}
          </nav>
          <span class="who">
            {user.username} <span class="role">({user.role})</span>
          </span>
          <button
            type="button"
            onClick={async () => {
              await session.logout();
              setEnded(null);
              setUser(null);
            }}
          >
            Log out
          </button>
        </header>
        {/* Another user logging in after a session ended starts the pages afresh. */}
        <main id="main" tabIndex={-1} key={user.username}>
          {route.page === "overview" && <Overview />}
          {route.page === "devices" && <Devices />}
          {route.page === "device" && <DevicePage key={route.name} name={route.name} />}
          {route.page === "follow" && <FollowPage key={route.names.join(",")} names={route.names} />}
          {route.page === "profiles" && <Profiles />}
          {route.page === "data" && <DataFlow />}
          {route.page === "firmware" && <Firmware />}
          {route.page === "access" && <Access />}
        </main>
      </div>
      {ended !== null && (
        <Login
          notice={ended}
          dialog
          onIn={() => {
            const who = session.user;
            setEnded(null);
            setUser(who);
          }}
        />
      )}
    </>
  );
}

/** The login form: a page of its own, or (`dialog`) over the pages of a session that
 * ended, which stay as they were underneath. */
function Login({ notice, onIn, dialog = false }: { notice: string | null; onIn: () => void; dialog?: boolean }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const id = useMemo(() => Math.random().toString(36).slice(2), []);
  const Box = dialog ? "div" : "main";
  return (
    <Box
      class={dialog ? "login dialog" : "login"}
      id={dialog ? undefined : "main"}
      role={dialog ? "dialog" : undefined}
      aria-modal={dialog ? "true" : undefined}
      aria-labelledby={`h-${id}`}
    >
      <h1 id={`h-${id}`}>{dialog ? "Log in again" : "Outpost"}</h1>
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
        <input id={`u-${id}`} name="username" autocomplete="username" required autoFocus={dialog} />
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
    </Box>
  );
}
