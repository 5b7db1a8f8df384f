// A live stream from the gateway (server-sent events read through `fetch`, which sends
// the access token; its first event, `following`, says the gateway follows the bus for it
// and nothing it carries from then on is missed): followed until the page lets go of it, opened again after a break or
// a stream's end (each lasts a token's life), and after a new login if the session ended.
import { ApiError, SessionEnded } from "./api";
import { session } from "./app";
import { failure } from "./change";
import { readEvents, type SseEvent } from "./sse";

export type LiveState = "connecting" | "live" | "stopped";

/** Follows `path` until `signal` aborts: `on` gets each event; `state` and `error` say how
 * the stream is doing (the error is null while it flows). */
export async function follow(
  path: string,
  on: (e: SseEvent) => void,
  signal: AbortSignal,
  state: (s: LiveState) => void,
  error: (e: string | null) => void,
): Promise<void> {
  while (!signal.aborted) {
    try {
      const r = await session.raw(path, { signal, headers: { accept: "text/event-stream" } });
      if (!r.ok) throw new ApiError(r.status, `live data: the node answered ${r.status}`);
      // Live once the gateway follows the bus for this stream (its first event).
      await readEvents(
        r,
        (e) => {
          if (e.event !== "following") return on(e);
          state("live");
          error(null);
        },
        signal,
      );
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof SessionEnded) {
        // Live again after the next login; the page keeps what it has.
        state("stopped");
        await session.whenIn();
        continue;
      }
      error(failure(e));
    }
    if (signal.aborted) return;
    state("stopped");
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}
