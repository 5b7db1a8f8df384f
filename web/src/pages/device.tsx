import { useEffect, useRef, useState } from "preact/hooks";
import { SessionEnded } from "../api";
import { session } from "../app";
import { failure, useChange } from "../change";
import { Problem, useLoad } from "../load";
import { follow, type LiveState } from "../stream";
import { Series } from "../series";
import { checkValue, numeric, type ResourceProperties } from "../values";
import type { Chart } from "../chart";
import type { Device } from "./devices";
import { Settings, type AutoEvent } from "./device-settings";

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
  device: Device & { autoEvents?: AutoEvent[] };
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

/** What an autoEvent may read: readable resources that are not hidden, and read commands. */
function sources(resources: Resource[], commands: Command[]): string[] {
  const readable = resources.filter((r) => !r.isHidden && (r.properties.readWrite ?? "R").includes("R"));
  return [...new Set([...readable.map((r) => r.name), ...commands.filter((c) => c.get).map((c) => c.name)])];
}

/** A device's page: its facts, live charts, commands and settings. */
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
          <Resources resources={resources} readings={d.readings ?? []} />
          <Charts device={name} resources={charted} />
          <Commands device={name} commands={d.commands ?? []} resources={resources} />
          <Settings device={d.device} sources={sources(resources, d.commands ?? [])} onChanged={ov.reload} />
        </>
      )}
    </section>
  );
}

/** The profile's resources: type, access, units, bounds, and the latest reading of each. */
function Resources({ resources, readings }: { resources: Resource[]; readings: Reading[] }) {
  const shown = resources.filter((r) => !r.isHidden);
  if (shown.length === 0) return null;
  const latest = new Map(readings.map((r) => [r.resourceName, r]));
  return (
    <details class="resources">
      <summary>
        <h2>Resources ({shown.length})</h2>
      </summary>
      <div class="table-wrap" tabIndex={0} role="region" aria-label="Resources">
        <table>
          <caption class="sr-only">The profile's resources and their latest readings</caption>
          <thead>
            <tr>
              <th scope="col">Resource</th>
              <th scope="col">Type</th>
              <th scope="col">Access</th>
              <th scope="col">Range</th>
              <th scope="col">Latest</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((r) => {
              const p = r.properties;
              const l = latest.get(r.name);
              const range = p.minimum !== undefined || p.maximum !== undefined ? `${p.minimum ?? ""} … ${p.maximum ?? ""}` : "–";
              return (
                <tr key={r.name} data-resource={r.name}>
                  <th scope="row">{r.name}</th>
                  <td>{p.valueType}</td>
                  <td>{p.readWrite ?? "R"}</td>
                  <td>{range}</td>
                  <td>{l ? `${l.value}${p.units ? ` ${p.units}` : ""}` : "–"}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </details>
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

/** One followed device: its name, linking to its page, and its live charts. */
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

/** Live charts of `resources`: the history of the window chosen, then readings as they
 * come over a stream that is opened again after a break or a new login. */
function Charts({ device, resources, heading = true }: { device: string; resources: Resource[]; heading?: boolean }) {
  const [win, setWin] = useState(WINDOWS[0][1]);
  const [live, setLive] = useState<LiveState>("connecting");
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
        if (!gone) setError("the charts cannot be loaded: reload the page");
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
      // The history; after a new login if the session ended meanwhile.
      while (!gone) {
        const end = Date.now() * 1e6;
        const start = end - win * 1e9;
        try {
          const h = await session.call<{ readings: Reading[] }>(
            `/core-data/api/v3/reading/device/name/${encodeURIComponent(device)}/start/${start}/end/${end}?limit=${HISTORY}`,
          );
          for (const r of h.readings ?? []) add(r);
          break;
        } catch (e) {
          if (gone) break;
          if (!(e instanceof SessionEnded)) {
            setError(failure(e));
            break;
          }
          await session.whenIn();
        }
      }
      // Live readings as the bus carries them; the stream comes back after a break.
      if (gone) return;
      await follow(
        `/api/v3/stream/device/${encodeURIComponent(device)}`,
        (e) => {
          if (e.event !== "reading") return;
          try {
            add(JSON.parse(e.data) as Reading);
          } catch {
            // A line that is not a reading: skipped.
          }
        },
        abort.signal,
        (s) => !gone && setLive(s),
        (e) => !gone && setError(e),
      );
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

/** The device's commands, each in a form of its own. */
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

/** One command of the device: read it, or (for those who may) write its parameters, each
 * checked against the profile before it is sent. */
function CommandForm({ device, command, resources }: { device: string; command: Command; resources: Resource[] }) {
  const c = useChange();
  const [invalid, setInvalid] = useState<Record<string, string>>({});
  const url = `/core-command/api/v3/device/name/${encodeURIComponent(device)}/${encodeURIComponent(command.name)}`;
  const props = (res: string) =>
    resources.find((r) => r.name === res)?.properties ?? ({ valueType: "String" } as ResourceProperties);
  const writable = command.set && session.canWrite;
  const params = command.parameters ?? [];
  const read = () =>
    c.run(
      (r: { event?: { readings?: Reading[] } }) =>
        (r.event?.readings ?? []).map((x) => `${x.resourceName} = ${x.value}`).join(", ") || "no reading",
      () => session.call<{ event?: { readings?: Reading[] } }>(url),
    );
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
        onSubmit={(e) => {
          e.preventDefault();
          const f = new FormData(e.currentTarget);
          const body: Record<string, string> = {};
          const bad: Record<string, string> = {};
          for (const p of params) {
            const checked = checkValue(props(p.resourceName), String(f.get(p.resourceName) ?? ""));
            if (checked.ok) body[p.resourceName] = checked.value;
            else bad[p.resourceName] = checked.error;
          }
          setInvalid(bad);
          if (Object.keys(bad).length > 0) return;
          void c.run("written", () => session.call(url, { method: "PUT", body: JSON.stringify(body) }));
        }}
      >
        {command.get && (
          <button type="button" disabled={c.busy} onClick={read}>
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
        {writable && params.length > 0 && (
          <button type="submit" disabled={c.busy}>
            Write
          </button>
        )}
        {c.outcome}
      </form>
    </details>
  );
}
