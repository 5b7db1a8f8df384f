// The rules and export page: rules pipelines with what they did, export destinations with
// their queues and links, and the dead letters a destination refused, to queue again.
import { useState } from "preact/hooks";
import { session } from "../app";
import { Confirm, useChange } from "../change";
import {
  Rates,
  ifEnabled,
  loadExport,
  describeAlert,
  describeFilter,
  describeItem,
  describeStep,
  link,
  linkClass,
  perSecond,
  type AlertRule,
  type Rated,
  type Destination,
  type Step,
} from "../dataflow";
import { bytes, count, duration } from "../format";
import { Problem, age, useLoad } from "../load";
import "./data.css";

/** How often the counts are polled: often enough for a rate, light enough for a phone. */
const EVERY = 3000;

interface PipelineView {
  pipeline: {
    name: string;
    devices?: string[];
    profiles?: string[];
    resources?: string[];
    steps?: Step[];
    alerts?: AlertRule[];
  };
  source: "config" | "api";
  readingsIn: number;
  readingsOut: number;
  eventsOut: number;
  alerts: number;
  late: number;
  outputsWaiting: number;
  reduction: number | null;
}

/** How to turn a service on, for the notice where it is off. */
function NotEnabled({ what, section, more }: { what: string; section: string; more: string }) {
  return (
    <p class="notice" role="status" data-disabled={section}>
      {what} is not enabled on this node. To turn it on, set <code>enabled = true</code> under{" "}
      <code>[{section}]</code> in the node's configuration file, {more}, and restart the node.
    </p>
  );
}

/** Rules pipelines with what they did, and export destinations with their queues, links,
 * send rates and dead letters; refreshed every few seconds. */
export function DataFlow() {
  return (
    <section aria-labelledby="data-h">
      <h1 id="data-h">Rules and export</h1>
      <Pipelines />
      <Destinations />
    </section>
  );
}

/** Each rules pipeline: what it takes, what it does, and its counts with their rates. */
function Pipelines() {
  const [rates] = useState(() => new Rates());
  const l = useLoad(
    () =>
      ifEnabled(async () => {
        const r = await session.call<{ pipelines: PipelineView[] }>("/rules/api/v3/pipeline/all");
        const at = Date.now();
        return r.pipelines.map((p) => ({
          ...p,
          rates: {
            in: rates.see(`${p.pipeline.name}/in`, at, p.readingsIn),
            out: rates.see(`${p.pipeline.name}/out`, at, p.readingsOut),
          },
        }));
      }),
    [],
    EVERY,
  );
  const d = l.data;
  const list = d?.enabled ? [...d.value].sort((a, b) => a.pipeline.name.localeCompare(b.pipeline.name)) : [];
  return (
    <section aria-labelledby="pipelines-h">
      <h2 id="pipelines-h">Rules pipelines</h2>
      <Problem l={l} what="the pipelines" />
      {!d && !l.error && <p class="muted">Loading…</p>}
      {d && !d.enabled && (
        <NotEnabled
          what="Rules"
          section="rules"
          more="add pipelines as [[rules.pipelines]] tables (see the commented example in the default configuration)"
        />
      )}
      {d?.enabled && list.length === 0 && (
        <p class="muted">No pipelines yet: add them as [[rules.pipelines]] in the configuration, or over the API.</p>
      )}
      <ul class="cards flow">
        {list.map((p) => (
          <li key={p.pipeline.name} class="card" data-pipeline={p.pipeline.name}>
            <h3>{p.pipeline.name}</h3>
            <span class="muted">
              {p.source === "config" ? "from the configuration file" : "added over the API"}
            </span>
            <dl class="facts">
              <dt>Devices</dt>
              <dd>{describeFilter(p.pipeline.devices, "device")}</dd>
              {(p.pipeline.profiles ?? []).length > 0 && (
                <>
                  <dt>Profiles</dt>
                  <dd>{describeFilter(p.pipeline.profiles, "profile")}</dd>
                </>
              )}
              <dt>Resources</dt>
              <dd>{describeFilter(p.pipeline.resources, "resource")}</dd>
              <dt>Steps</dt>
              <dd>{(p.pipeline.steps ?? []).map(describeStep).join(" → ") || "none"}</dd>
              <dt>Alerts when</dt>
              <dd>{(p.pipeline.alerts ?? []).map(describeAlert).join("; ") || "never"}</dd>
              <dt>Readings in</dt>
              <dd data-count="readingsIn" data-value={p.readingsIn}>
                {p.readingsIn.toLocaleString()} <span class="muted">· {perSecond(p.rates.in)}</span>
              </dd>
              <dt>Readings out</dt>
              <dd data-count="readingsOut" data-value={p.readingsOut}>
                {p.readingsOut.toLocaleString()} <span class="muted">· {perSecond(p.rates.out)}</span>
              </dd>
              <dt>Events out</dt>
              <dd data-count="eventsOut" data-value={p.eventsOut}>
                {p.eventsOut.toLocaleString()}
              </dd>
              <dt>Reduction</dt>
              <dd>{p.reduction !== null ? `${p.reduction.toFixed(1)} in per 1 out` : "–"}</dd>
              <dt>Alerts raised</dt>
              <dd data-count="alerts" data-value={p.alerts}>
                {p.alerts.toLocaleString()}
              </dd>
              {p.late > 0 && (
                <>
                  <dt>Too late</dt>
                  <dd>{p.late.toLocaleString()} readings after their window closed</dd>
                </>
              )}
              {p.outputsWaiting > 0 && (
                <>
                  <dt>Waiting</dt>
                  <dd>{p.outputsWaiting.toLocaleString()} events for the bus</dd>
                </>
              )}
            </dl>
          </li>
        ))}
      </ul>
      {d?.enabled && list.length > 0 && (
        <p class="muted">Counts since the rules service started; rates over the last {duration(EVERY)}.</p>
      )}
    </section>
  );
}

/** Each export destination, as a card. */
function Destinations() {
  const [rates] = useState(() => new Rates());
  const l = useLoad(() => loadExport(session, rates), [], EVERY);
  const d = l.data;
  const list = d?.enabled ? d.value : [];
  return (
    <section aria-labelledby="export-h">
      <h2 id="export-h">Export destinations</h2>
      <Problem l={l} what="the export status" />
      {!d && !l.error && <p class="muted">Loading…</p>}
      {d && !d.enabled && (
        <NotEnabled
          what="Export"
          section="export"
          more="add at least one destination as [[export.destinations]] (see the commented example in the default configuration)"
        />
      )}
      {d?.enabled && list.length === 0 && (
        <p class="muted">No destinations: add them as [[export.destinations]] in the configuration.</p>
      )}
      {list.map((x) => (
        <DestinationCard key={x.name} d={x} at={l.at ?? Date.now()} />
      ))}
    </section>
  );
}

/** One destination: where it sends, how the link is, its queue, what it sent. */
function DestinationCard({ d, at }: { d: Rated<Destination>; at: number }) {
  const s = d.sender;
  const q = d.queue;
  const ln = link(s);
  // An id holds no space: the name is encoded.
  const h = `dest-${encodeURIComponent(d.name)}`;
  return (
    <article class="card destination" data-destination={d.name} aria-labelledby={h}>
      <h3 id={h}>
        {d.name} <span class="muted">({d.kind})</span>
      </h3>
      <dl class="facts">
        <dt>Sends to</dt>
        <dd class="url">{d.url}</dd>
        {d.edge && (
          <>
            <dt>As edge</dt>
            <dd>{d.edge}</dd>
          </>
        )}
        <dt>Link</dt>
        <dd data-link={ln.state}>
          <span class={linkClass(ln.state)}>{ln.label}</span>
          {ln.state === "down" && s.nextRetryMs != null && (
            <span class="muted"> · next try in {duration(Math.max(0, s.nextRetryMs - Date.now()))}</span>
          )}
        </dd>
        {s.lastError && (
          <>
            <dt>Last error</dt>
            <dd>
              {s.lastError}
              {s.lastErrorMs != null && <span class="muted"> · {age(s.lastErrorMs)} ago</span>}
            </dd>
          </>
        )}
        <dt>Last sent</dt>
        <dd>{s.lastSuccessMs != null ? `${age(s.lastSuccessMs)} ago` : "never"}</dd>
        <dt>Queue</dt>
        <dd data-queue-items={q.items}>
          {count(q.items, "item")}, {bytes(q.bytes)} of {bytes(q.maxBytes)}
          <br />
          <meter
            min={0}
            max={q.maxBytes || 1}
            high={(q.maxBytes || 1) * 0.8}
            value={q.bytes}
            aria-label={`Queue of ${d.name}, share of its room in use`}
          />
          {q.priorities.some((p) => p.priority === "high" && p.items > 0) && (
            <span class="muted">
              {" "}
              {q.priorities
                .filter((p) => p.items > 0)
                .map((p) => `${p.priority} ${p.items.toLocaleString()}`)
                .join(", ")}
            </span>
          )}
        </dd>
        <dt>Oldest item</dt>
        <dd data-oldest-ms={q.oldestAgeMs ?? ""}>
          {q.oldestAgeMs != null ? `queued ${age(at - q.oldestAgeMs)} ago` : "none waiting"}
        </dd>
        <dt>Send rate</dt>
        <dd>
          {perSecond(d.rates.items, "items")} <span class="muted">· {perSecond(d.rates.bytes === null ? null : d.rates.bytes / 1024, "KiB")}</span>
        </dd>
        <dt>Sent since start</dt>
        <dd>
          {s.sentItems.toLocaleString()} items in {s.sentBatches.toLocaleString()} batches, {bytes(s.wireBytes)}
        </dd>
        {(q.droppedOverflow > 0 || q.expired > 0 || q.refused > 0 || q.diskFull > 0 || s.tooLarge > 0) && (
          <>
            <dt>Lost</dt>
            <dd class="error">
              {[
                q.droppedOverflow > 0 && `${q.droppedOverflow.toLocaleString()} dropped (queue full)`,
                q.expired > 0 && `${q.expired.toLocaleString()} expired`,
                q.refused > 0 && `${q.refused.toLocaleString()} refused (queue full)`,
                q.diskFull > 0 && `${q.diskFull.toLocaleString()} refused (disk full)`,
                s.tooLarge > 0 && `${s.tooLarge.toLocaleString()} too large`,
              ]
                .filter(Boolean)
                .join(", ")}
            </dd>
          </>
        )}
      </dl>
      <DeadLetters dest={d.name} />
    </article>
  );
}

interface DeadLetter {
  priority: string;
  seq: number;
  enqueuedMs: number;
  failedMs: number;
  reason: string;
  data: unknown;
}

/** Dead letters shown at most. */
const DEAD_SHOWN = 20;

/** Items the receiver refused for good, kept for a look and to queue again once it is fixed
 * (after a question: they are sent again and refused again unless the receiver was fixed).
 * Queuing again is for operators and admins; the API refuses others anyway. */
function DeadLetters({ dest }: { dest: string }) {
  const path = `/export/api/v3/export/deadletter/${encodeURIComponent(dest)}`;
  const l = useLoad(
    () => session.call<{ totalCount: number; deadLetters: DeadLetter[] }>(`${path}?limit=${DEAD_SHOWN}`),
    [dest],
    10_000,
  );
  // Here, not in the list: what was queued again is said once the list is empty.
  const c = useChange(l.reload);
  const total = l.data?.totalCount ?? 0;
  const letters = l.data?.deadLetters ?? [];
  return (
    <div class="dead" data-dead={l.data ? total : undefined}>
      <Problem l={l} what={`the dead letters of ${dest}`} />
      {l.data && total === 0 && <p class="muted">No dead letters.</p>}
      {total > 0 && (
        <details class="command">
          <summary>{count(total, "dead letter")}</summary>
          <div class="table-wrap" tabIndex={0} role="region" aria-label={`Dead letters of ${dest}`}>
            <table>
              <caption>
                {total > letters.length ? `The newest ${letters.length} of ${total.toLocaleString()}` : "Newest first"}
              </caption>
              <thead>
                <tr>
                  <th scope="col">Refused</th>
                  <th scope="col">Item</th>
                  <th scope="col">Reason</th>
                  <th scope="col">Priority</th>
                </tr>
              </thead>
              <tbody>
                {letters.map((x) => (
                  <tr key={`${x.priority}-${x.seq}`}>
                    <td>{age(x.failedMs)} ago</td>
                    <td>{describeItem(x.data)}</td>
                    <td>{x.reason}</td>
                    <td>{x.priority}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {session.canWrite && (
            <p class="requeue">
              <Confirm
                disabled={c.busy}
                question={`Queue ${count(total, "dead letter")} of ${dest} again? They are sent again and refused again unless the receiver was fixed.`}
                yes="Yes, queue them again"
                no="Cancel"
                onYes={() =>
                  void c.run(
                    (r: { requeued: number }) => `${count(r.requeued, "item")} queued again.`,
                    () => session.call<{ requeued: number }>(`${path}/requeue`, { method: "POST" }),
                  )
                }
              >
                Queue again<span class="sr-only"> the dead letters of {dest}</span>…
              </Confirm>
            </p>
          )}
        </details>
      )}
      {c.outcome}
    </div>
  );
}
