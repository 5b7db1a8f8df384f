import { useEffect, useState } from "preact/hooks";
import { session } from "../app";
import { Rates, ifEnabled, link, linkClass, loadExport, perSecond } from "../dataflow";
import { bytes, duration } from "../format";
import { Problem, age, useLoad } from "../load";
import { follow, type LiveState } from "../stream";
import { href } from "../route";
import {
  capShare,
  exportSummary,
  newest,
  nodeEvent,
  type NodeEvent,
  percent,
  retentionText,
  severityClass,
  type Notification,
  type Retention,
} from "../overview-summary";
import "./overview.css";

interface Registration {
  serviceId: string;
  status: string;
  host: string;
  port: number;
  lastConnected?: number;
  /** Outpost's additions: the instance's version and when it started (ms). */
  version?: string;
  started?: number;
}

/** Notifications listed. */
const RECENT = 10;

/** The node at a glance: summary cards (ingest rate, storage, export, alerts), every
 * service the registry knows with its version, and the newest notifications. */
export function Overview() {
  const notes = useNotes();
  return (
    <section aria-labelledby="overview-h">
      <h1 id="overview-h">Overview</h1>
      <ul class="cards summary-cards">
        <IngestAndStorage />
        <Export />
        <Alerts l={notes} />
      </ul>
      <Services />
      <NodeEvents />
      <Notifications l={notes} />
    </section>
  );
}

/** Ingest rate and storage, from core-data's retention status (what is stored, its
 * bounds): the rate is the growth of the stored counts between two polls. */
function IngestAndStorage() {
  const [rates] = useState(() => new Rates());
  const l = useLoad(async () => {
    const r = await session.call<Retention>("/core-data/api/v3/retention");
    const at = Date.now();
    return {
      ...r,
      readingRate: rates.see("readings", at, r.storedReadings),
      eventRate: rates.see("events", at, r.storedEvents),
    };
  }, [], 5000);
  const r = l.data;
  const share = r ? capShare(r) : null;
  return (
    <>
      <li class="card" data-card="ingest">
        <h2>Ingest</h2>
        <Problem l={l} what="the ingest rate" />
        {!r && !l.error && <span class="muted">Loading…</span>}
        {r && (
          <>
            <span class="big" data-ingest-rate={r.readingRate ?? ""}>
              {perSecond(r.readingRate, "readings")}
            </span>
            <span class="muted">{perSecond(r.eventRate, "events")} stored</span>
          </>
        )}
      </li>
      <li class="card wide" data-card="storage">
        <h2>Storage</h2>
        {l.error && !r && <span class="muted">Not known (see Ingest).</span>}
        {r && (
          <>
            <span class="big">{r.storedReadings.toLocaleString()} readings</span>
            <span class="muted">
              in {r.storedEvents.toLocaleString()} events{r.storedBytes ? `, ${bytes(r.storedBytes)} on disk` : ""}
            </span>
            {share !== null && (
              <span>
                <meter min={0} max={1} high={0.8} value={share} aria-label="Share of the readings cap in use" />{" "}
                {percent(share)} of the cap
              </span>
            )}
            <span class="muted">{retentionText(r)}</span>
            {r.run?.error && <span class="error">Last retention run failed: {r.run.error}</span>}
          </>
        )}
      </li>
    </>
  );
}

/** The export queues and links, in short; the Rules & export page has the rest. */
function Export() {
  const l = useLoad(() => loadExport(session), [], 5000);
  const d = l.data;
  const list = d?.enabled ? d.value : [];
  const s = exportSummary(list);
  return (
    <li class="card wide" data-card="export">
      <h2>Export</h2>
      <Problem l={l} what="the export status" />
      {!d && !l.error && <span class="muted">Loading…</span>}
      {d && !d.enabled && <span class="muted">Not enabled on this node (the details say how to).</span>}
      {d?.enabled && list.length === 0 && <span class="muted">No destinations.</span>}
      {list.length > 0 && (
        <span class="big">
          {s.items.toLocaleString()} queued{s.notUp.length > 0 && <span class="status down"> · {s.notUp.length} down</span>}
        </span>
      )}
      <ul class="dest-list">
        {list.map((x) => {
          const ln = link(x.sender);
          return (
            <li key={x.name} data-destination={x.name}>
              <strong>{x.name}</strong>{" "}
              <span class={linkClass(ln.state)} data-link={ln.state}>
                {ln.state}
              </span>
              <span class="muted">
                {" "}
                · {x.queue.items.toLocaleString()} queued, {bytes(x.queue.bytes)}
                {x.queue.oldestAgeMs != null && l.at !== null && <>, oldest {age(l.at - x.queue.oldestAgeMs)}</>}
              </span>
            </li>
          );
        })}
      </ul>
      <a href={href({ page: "data" })}>Export details</a>
    </li>
  );
}

interface Notes {
  recent: Notification[];
  total: number;
  alerts: number;
  lastAlert: Notification | null;
}

/** The newest notifications and how many rules alerts there were, every 10 s. */
function useNotes() {
  return useLoad(
    () =>
      ifEnabled<Notes>(async () => {
        const base = "/support-notifications/api/v3/notification";
        type List = { totalCount: number; notifications?: Notification[] };
        const [recent, alerts] = await Promise.all([
          session.call<List>(`${base}/start/0/end/${Date.now()}?limit=${RECENT}`),
          session.call<List>(`${base}/category/rules-alert?limit=1`),
        ]);
        return {
          recent: newest(recent.notifications ?? [], RECENT),
          total: recent.totalCount,
          alerts: alerts.totalCount,
          lastAlert: alerts.notifications?.[0] ?? null,
        };
      }),
    [],
    10_000,
  );
}

type NotesLoad = ReturnType<typeof useNotes>;

/** How many rules alerts the node raised (stored as notifications), and the newest. */
function Alerts({ l }: { l: NotesLoad }) {
  const d = l.data;
  return (
    <li class="card" data-card="alerts">
      <h2>Alerts</h2>
      <Problem l={l} what="the notifications" />
      {!d && !l.error && <span class="muted">Loading…</span>}
      {d && !d.enabled && <span class="muted">Notifications are not enabled on this node.</span>}
      {d?.enabled && (
        <>
          <span class="big" data-alerts={d.value.alerts}>
            {d.value.alerts.toLocaleString()} rules {d.value.alerts === 1 ? "alert" : "alerts"}
          </span>
          {d.value.lastAlert ? (
            <span>
              Newest {d.value.lastAlert.created ? `${age(d.value.lastAlert.created)} ago` : ""}:{" "}
              {d.value.lastAlert.content}
            </span>
          ) : (
            <span class="muted">None raised.</span>
          )}
        </>
      )}
    </li>
  );
}

/** Node events shown as they happen. */
const LIVE_EVENTS = 10;

/** Alerts and system events (devices, profiles, services added, changed, removed) as the
 * node's bus carries them, newest first, since the page opened. */
function NodeEvents() {
  const [events, setEvents] = useState<NodeEvent[]>([]);
  const [live, setLive] = useState<LiveState>("connecting");
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const abort = new AbortController();
    void follow(
      "/api/v3/stream/node",
      (e) => {
        const n = nodeEvent(e.event, e.data);
        if (n) setEvents((list) => [n, ...list].slice(0, LIVE_EVENTS));
      },
      abort.signal,
      setLive,
      setError,
    );
    return () => abort.abort();
  }, []);
  return (
    <section aria-labelledby="live-h">
      <h2 id="live-h">
        Node events{" "}
        <span class={`status ${live === "live" ? "up" : "down"}`} data-node-live={live}>
          {live === "live" ? "Live" : live === "connecting" ? "Connecting" : "Reconnecting"}
        </span>
      </h2>
      {error && (
        <p class="error" role="alert">
          Live events: {error}
        </p>
      )}
      {events.length === 0 ? (
        <p class="muted">Nothing yet since this page opened: alerts and changes to devices, profiles and services show here as they happen.</p>
      ) : (
        <ul class="node-events" aria-live="polite">
          {events.map((n, i) => (
            <li key={`${n.at}-${i}`} data-node-event={n.kind}>
              <time class="muted" dateTime={new Date(n.at).toISOString()}>
                {new Date(n.at).toLocaleTimeString()}
              </time>{" "}
              {n.severity && <span class={severityClass(n.severity.toUpperCase())}>{n.severity} </span>}
              {n.what}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

/** The newest notifications, whatever raised them. */
function Notifications({ l }: { l: NotesLoad }) {
  const d = l.data;
  return (
    <section aria-labelledby="notes-h">
      <h2 id="notes-h">Recent notifications</h2>
      {!d && !l.error && <p class="muted">Loading…</p>}
      {!d && l.error && <p class="muted">Not known: {l.error}.</p>}
      {d && !d.enabled && (
        <p class="notice" role="status">
          Notifications are not enabled on this node. To keep them, set <code>enabled = true</code> under{" "}
          <code>[support_notifications]</code> in the node's configuration file (it is on by default) and restart
          the node.
        </p>
      )}
      {d?.enabled && d.value.recent.length === 0 && <p class="muted">No notifications yet.</p>}
      {d?.enabled && d.value.recent.length > 0 && (
        <div class="table-wrap" tabIndex={0} role="region" aria-label="Recent notifications">
          <table class="notes">
            <caption class="sr-only">
              The {d.value.recent.length} newest of {d.value.total.toLocaleString()} notifications
            </caption>
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Severity</th>
                <th scope="col">Category</th>
                <th scope="col">Notification</th>
              </tr>
            </thead>
            <tbody>
              {d.value.recent.map((n) => (
                <tr key={n.id}>
                  <td>
                    {n.created ? (
                      <time dateTime={new Date(n.created).toISOString()}>{age(n.created)} ago</time>
                    ) : (
                      "–"
                    )}
                  </td>
                  <td>
                    <span class={severityClass(n.severity)}>{n.severity}</span>
                  </td>
                  <td>{n.category || "–"}</td>
                  <td>
                    {n.content}
                    {n.sender && <span class="muted"> · from {n.sender}</span>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

/** Node health: every service the registry knows, UP or DOWN, with its version and how
 * long it has run (as each instance registered itself: from its start to its last
 * heartbeat, both on the node's clock, so a browser's clock does not skew it); refreshed
 * every 5 s. */
function Services() {
  const reg = useLoad(
    () => session.call<{ registrations: Registration[] }>("/core-keeper/api/v3/registry/all"),
    [],
    5000,
  );
  const list = [...(reg.data?.registrations ?? [])].sort((a, b) => a.serviceId.localeCompare(b.serviceId));
  const down = list.filter((r) => r.status !== "UP").length;
  return (
    <section aria-labelledby="services-h">
      <h2 id="services-h">Services</h2>
      <Problem l={reg} what="the services" />
      {!reg.data && !reg.error && <p class="muted">Loading…</p>}
      {reg.data && (
        <p class="summary" role="status">
          {list.length} services, {down === 0 ? "all up" : `${down} not up`}
          {reg.at !== null && <span class="muted"> · as of {age(reg.at)} ago</span>}
        </p>
      )}
      <div class="table-wrap" tabIndex={0} role="region" aria-label="Services">
        <table class="services">
          <caption class="sr-only">Services</caption>
          <thead>
            <tr>
              <th scope="col">Service</th>
              <th scope="col">Status</th>
              <th scope="col">Version</th>
              <th scope="col">Up for</th>
              <th scope="col">Address</th>
              <th scope="col">Last seen</th>
            </tr>
          </thead>
          <tbody>
            {list.map((r) => (
              <tr key={r.serviceId} data-service={r.serviceId}>
                <th scope="row">{r.serviceId}</th>
                <td>
                  <span class={`status ${r.status === "UP" ? "up" : "down"}`}>{r.status}</span>
                </td>
                <td data-version={r.serviceId}>{r.version || "–"}</td>
                <td data-uptime={r.serviceId}>{r.status === "UP" && r.started && r.lastConnected ? duration(Math.max(0, r.lastConnected - r.started)) : "–"}</td>
                <td>
                  {r.host}:{r.port}
                </td>
                <td>{r.lastConnected ? `${age(r.lastConnected)} ago` : "–"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
