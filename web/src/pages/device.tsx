import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, SessionEnded } from "../api";
import { session } from "../app";
import { Problem, useLoad } from "../load";
import { readEvents } from "../sse";
import { Series } from "../series";
import { checkValue, numeric, type ResourceProperties } from "../values";
import type { Chart } from "../chart";
import type { Device } from "./devices";

interface Resource {
  name: string;
  description?: string;
  isHidden?: boolean;
  properties: ResourceProperties;
}

interface Reading {
  resourceName: string;
  valueType: string;
  value: string;
  origin: number;
  units?: string;
}

interface Command {
  name: string;
  get: boolean;
  set: boolean;
  parameters?: { resourceName: string; valueType: string }[];
}

interface Overview {
  device: Device & { autoEvents?: { sourceName: string; interval: string }[] };
  profile: { name: string; deviceResources?: Resource[] } | null;
  readings: Reading[] | null;
  commands: Command[] | null;
  errors: Record<string, string>;
}

/** Points kept per chart: a day at one reading a minute, ten minutes at 5 Hz. */
const POINTS = 3000;

/** Readings asked of core-data for the history: the newest of the window, within what
 * one answer may hold (EdgeX's MaxResultCount, 1024 by default). */
const HISTORY = 1000;

const WINDOWS: [string, number][] = [
  ["5 minutes", 5 * 60],
  ["1 hour", 3600],
  ["24 hours", 24 * 3600],
];

/** A device's profile, latest readings and commands, in one answer from the gateway. */
function useOverview(name: string) {
  return useLoad(() => session.call<Overview>(`/api/v3/overview/device/${encodeURIComponent(name)}`), [name]);
}

/** What a device reports that a chart can show: readable, not hidden, a number or a boolean. */
function chartable(resources: Resource[]): Resource[] {
  return resources.filter(
    (r) => !r.isHidden && (r.properties.readWrite ?? "R").includes("R") && numeric(r.properties.valueType, "0") !== null,
  );
}

export function DevicePage({ name }: { name: string }) {
  const ov = useOverview(name);
  const d = ov.data;
  const resources = d?.profile?.deviceResources ?? [];
  const charted = chartable(resources);
  return (
    <section aria-labelledby="device-h">
      <p>
        <a href="#/devices">← Devices</a>
      </p>
      <h1 id="device-h">{name}</h1>
      <Problem l={ov} what="the device" />
      {d && (
        <>
          <dl class="facts">
            <dt>Profile</dt>
            <dd>{d.device.profileName}</dd>
            <dt>Service</dt>
            <dd>{d.device.serviceName}</dd>
            <dt>State</dt>
            <dd>
              {d.device.adminState}, {d.device.operatingState}
            </dd>
            <dt>Labels</dt>
            <dd>{(d.device.labels ?? []).join(", ") || "–"}</dd>
            <dt>AutoEvents</dt>
            <dd>{(d.device.autoEvents ?? []).map((a) => `${a.sourceName} every ${a.interval}`).join(", ") || "–"}</dd>
          </dl>
          {Object.entries(d.errors ?? {}).map(([k, v]) => (
            <p class="error" role="alert" key={k}>
              {k}: {v}
            </p>
          ))}
          <Charts device={name} resources={charted} />
          <Commands device={name} commands={d.commands ?? []} resources={resources} />
        </>
      )}
    </section>
  );
}

/** Several devices' live charts on one page (`#/follow/<a>,<b>`). */
export function FollowPage({ names }: { names: string[] }) {
  return (
    <section aria-labelledby="follow-h">
      <p>
        <a href="#/devices">← Devices</a>
      </p>
      <h1 id="follow-h">Following {names.length} devices</h1>
      {names.map((n) => (
        <Followed key={n} name={n} />
      ))}
    </section>
  );
}

function Followed({ name }: { name: string }) {
  const ov = useOverview(name);
  const charted = chartable(ov.data?.profile?.deviceResources ?? []);
  return (
    <section class="followed" aria-label={name}>
      <h2>
        <a href={`#/device/${encodeURIComponent(name)}`}>{name}</a>
      </h2>
      <Problem l={ov} what={name} />
      <Charts device={name} resources={charted} heading={false} />
    </section>
  );
}

function Charts({ device, resources, heading = true }: { device: string; resources: Resource[]; heading?: boolean }) {
  const [win, setWin] = useState(WINDOWS[0][1]);
  const [live, setLive] = useState<"connecting" | "live" | "stopped">("connecting");
  const [error, setError] = useState<string | null>(null);
  const boxes = useRef<Map<string, HTMLDivElement>>(new Map());
  const summaries = useRef<Map<string, HTMLParagraphElement>>(new Map());
  const key = resources.map((r) => r.name).join("\u0000");

  useEffect(() => {
    if (resources.length === 0) return;
    const abort = new AbortController();
    const series = new Map(resources.map((r) => [r.name, new Series(POINTS)]));
    const charts = new Map<string, Chart>();
    let gone = false;
    const add = (r: Reading) => {
      const s = series.get(r.resourceName);
      const v = numeric(r.valueType, r.value);
      if (!s || v === null) return;
      s.push(r.origin / 1e9, v);
      charts.get(r.resourceName)?.changed();
    };
    (async () => {
      let chart: typeof import("../chart").chart;
      try {
        ({ chart } = await import("../chart"));
      } catch {
        // The node was upgraded since this page loaded: its chart code is another file.
        setError("the charts cannot be loaded: reload the page");
        return;
      }
      if (gone) return;
      for (const r of resources) {
        const el = boxes.current.get(r.name);
        const s = series.get(r.name);
        if (el && s) {
          const summary = summaries.current.get(r.name) ?? null;
          charts.set(r.name, chart(el, summary, r.name, r.properties.units ?? "", s));
        }
      }
      const end = Date.now() * 1e6;
      const start = end - win * 1e9;
      try {
        const h = await session.call<{ readings: Reading[] }>(
          `/core-data/api/v3/reading/device/name/${encodeURIComponent(device)}/start/${start}/end/${end}?limit=${HISTORY}`,
        );
        for (const r of h.readings ?? []) add(r);
      } catch (e) {
        if (!(e instanceof SessionEnded)) setError(e instanceof ApiError ? e.message : String(e));
      }
      // Live readings as the bus carries them; the stream comes back after a break.
      while (!gone) {
        try {
          const r = await session.raw(`/api/v3/stream/device/${encodeURIComponent(device)}`, {
            signal: abort.signal,
            headers: { accept: "text/event-stream" },
          });
          if (!r.ok) throw new ApiError(r.status, `live readings: the node answered ${r.status}`);
          setLive("live");
          setError(null);
          await readEvents(
            r,
            (e) => {
              if (e.event !== "reading") return;
              try {
                add(JSON.parse(e.data) as Reading);
              } catch {
                // A line that is not a reading: skipped.
              }
            },
            abort.signal,
          );
        } catch (e) {
          if (gone || e instanceof SessionEnded) break;
          setError(e instanceof ApiError ? e.message : String(e));
        }
        if (gone) break;
        setLive("stopped");
        await new Promise((ok) => setTimeout(ok, 2000));
      }
    })();
    return () => {
      gone = true;
      abort.abort();
      for (const c of charts.values()) c.destroy();
    };
  }, [device, key, win]);

  if (resources.length === 0) return null;
  return (
    <section aria-label={`Readings of ${device}`}>
      {heading && <h2>Readings</h2>}
      <div class="filters">
        <label>
          History
          <select value={String(win)} onChange={(e) => setWin(Number(e.currentTarget.value))}>
            {WINDOWS.map(([label, s]) => (
              <option key={s} value={String(s)}>
                {label}
              </option>
            ))}
          </select>
        </label>
        <span class={`status ${live === "live" ? "up" : "down"}`} role="status" data-live={live} data-device={device}>
          {live === "live" ? "Live" : live === "connecting" ? "Connecting" : "Reconnecting"}
        </span>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {resources.map((r) => (
        <figure key={r.name} class="chart">
          <figcaption>
            {r.name}
            {!heading && <span class="muted"> · {device}</span>}
          </figcaption>
          <div
            data-chart={r.name}
            aria-hidden="true"
            ref={(el) => {
              if (el) boxes.current.set(r.name, el);
            }}
          />
          <p
            class="muted"
            data-latest={r.name}
            data-device={device}
            ref={(el) => {
              if (el) summaries.current.set(r.name, el);
            }}
          />
        </figure>
      ))}
    </section>
  );
}

function Commands({ device, commands, resources }: { device: string; commands: Command[]; resources: Resource[] }) {
  if (commands.length === 0) return null;
  return (
    <section aria-labelledby="commands-h">
      <h2 id="commands-h">Commands</h2>
      {commands.map((c) => (
        <CommandForm key={c.name} device={device} command={c} resources={resources} />
      ))}
    </section>
  );
}

function CommandForm({ device, command, resources }: { device: string; command: Command; resources: Resource[] }) {
  const [result, setResult] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [invalid, setInvalid] = useState<Record<string, string>>({});
  const url = `/core-command/api/v3/device/name/${encodeURIComponent(device)}/${encodeURIComponent(command.name)}`;
  const props = (res: string) =>
    resources.find((r) => r.name === res)?.properties ?? ({ valueType: "String" } as ResourceProperties);
  const writable = command.set && session.canWrite;
  const params = command.parameters ?? [];
  const read = async () => {
    setError(null);
    try {
      const r = await session.call<{ event?: { readings?: Reading[] } }>(url);
      setResult((r.event?.readings ?? []).map((x) => `${x.resourceName} = ${x.value}`).join(", ") || "no reading");
    } catch (e) {
      if (!(e instanceof SessionEnded)) setError(e instanceof ApiError ? e.message : String(e));
    }
  };
  return (
    <details class="command" data-command={command.name}>
      <summary>
        {command.name}
        <span class="muted">
          {" "}
          {[command.get && "read", command.set && "write"].filter(Boolean).join(", ")}
        </span>
      </summary>
    <form
      aria-label={`Command ${command.name}`}
      onSubmit={async (e) => {
        e.preventDefault();
        const f = new FormData(e.currentTarget);
        const body: Record<string, string> = {};
        const bad: Record<string, string> = {};
        for (const p of params) {
          const c = checkValue(props(p.resourceName), String(f.get(p.resourceName) ?? ""));
          if (c.ok) body[p.resourceName] = c.value;
          else bad[p.resourceName] = c.error;
        }
        setInvalid(bad);
        if (Object.keys(bad).length > 0) return;
        setError(null);
        try {
          await session.call(url, { method: "PUT", body: JSON.stringify(body) });
          setResult("written");
        } catch (err) {
          if (!(err instanceof SessionEnded)) setError(err instanceof ApiError ? err.message : String(err));
        }
      }}
    >
      {command.get && (
        <button type="button" onClick={read}>
          Read
        </button>
      )}
      {writable &&
        params.map((p) => {
          const pr = props(p.resourceName);
          const id = `cmd-${encodeURIComponent(command.name)}-${encodeURIComponent(p.resourceName)}`;
          const hint = [pr.minimum !== undefined && `min ${pr.minimum}`, pr.maximum !== undefined && `max ${pr.maximum}`]
            .filter(Boolean)
            .join(", ");
          return (
            <div class="field" key={p.resourceName}>
              <label for={id}>
                {p.resourceName} <span class="muted">({pr.valueType}{hint && `, ${hint}`})</span>
              </label>
              <input
                id={id}
                name={p.resourceName}
                aria-invalid={invalid[p.resourceName] ? "true" : undefined}
                aria-describedby={invalid[p.resourceName] ? `${id}-e` : undefined}
              />
              {invalid[p.resourceName] && (
                <span class="error" id={`${id}-e`} role="alert">
                  {invalid[p.resourceName]}
                </span>
              )}
            </div>
          );
        })}
      {writable && params.length > 0 && <button type="submit">Write</button>}
      {result && (
        <p class="result" role="status">
          {result}
        </p>
      )}
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </form>
    </details>
  );
}
