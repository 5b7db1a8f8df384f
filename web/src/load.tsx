import { useEffect, useState } from "preact/hooks";
import { SessionEnded, staleAge } from "./api";
import { session } from "./app";
import { failure } from "./change";

export interface Loaded<T> {
  data: T | null;
  error: string | null;
  /** When `data` was fetched, ms since the epoch. */
  at: number | null;
  reload: () => void;
}

/** Loads `f` now and every `everyMs` (0: once), and again after a new login if the
 * session ended meanwhile. A failed reload keeps the last data, with
 * its age shown beside the error, so a backend that is down shows what was last known; so
 * does an answer the gateway kept for a service that did not answer. */
export function useLoad<T>(f: () => Promise<T>, deps: unknown[], everyMs = 0): Loaded<T> {
  const [state, setState] = useState<{ data: T | null; error: string | null; at: number | null }>({
    data: null,
    error: null,
    at: null,
  });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    let t: ReturnType<typeof setTimeout> | null = null;
    // The next load is planned once this one has settled, so a slow answer is not cut off.
    const next = () => {
      if (live && everyMs > 0) t = setTimeout(() => setTick((n) => n + 1), everyMs);
    };
    f().then(
      (data) => {
        const stale = staleAge(data);
        if (live && stale === null) setState({ data, error: null, at: Date.now() });
        if (live && stale !== null) {
          const error = "the service did not answer; the gateway keeps its last answer";
          setState({ data, error, at: Date.now() - stale * 1000 });
        }
        next();
      },
      (e) => {
        if (!live) return;
        // The session ended: load again once someone has logged in again.
        if (e instanceof SessionEnded) {
          void session.whenIn().then(() => live && setTick((n) => n + 1));
          return;
        }
        setState((s) => ({ ...s, error: failure(e) }));
        next();
      },
    );
    return () => {
      live = false;
      if (t) clearTimeout(t);
    };
  }, [...deps, tick]);
  return { ...state, reload: () => setTick((n) => n + 1) };
}

/** How long ago `at` (ms since the epoch) was, in the unit that reads best: "5 s", "3 min". */
export function age(at: number): string {
  const s = Math.max(0, Math.round((Date.now() - at) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

/** The error of a load, with the age of the data still shown. */
export function Problem({ l, what }: { l: Loaded<unknown>; what: string }) {
  if (!l.error) return null;
  return (
    <p class="error" role="alert">
      Cannot load {what}: {l.error}.
      {l.at !== null && <> Showing what was known {age(l.at)} ago.</>}
    </p>
  );
}
