import { useState } from "preact/hooks";
import { session } from "../app";
import { Problem, age, useLoad } from "../load";
import { href } from "../route";

export interface Device {
  name: string;
  profileName: string;
  serviceName: string;
  adminState: string;
  operatingState: string;
  labels?: string[];
}

/** What core-data holds of a device (Outpost's `GET /api/v3/device/summary`). */
interface Summary {
  deviceName: string;
  eventCount: number;
  readingCount: number;
  /** Its newest event's origin, nanoseconds. */
  lastOrigin: number;
}

/** Devices with a search by name and a filter by label, their states, and when each
 * was last heard from (its newest event in core-data). */
export function Devices() {
  const devices = useLoad(
    () => session.call<{ devices: Device[] }>("/core-metadata/api/v3/device/all?limit=1024"),
    [],
    10000,
  );
  const summaries = useLoad(
    () => session.call<{ devices: Summary[] }>("/core-data/api/v3/device/summary"),
    [],
    10000,
  );
  const heard = new Map((summaries.data?.devices ?? []).map((s) => [s.deviceName, s.lastOrigin / 1e6]));
  const [q, setQ] = useState("");
  const [label, setLabel] = useState("");
  const [followed, setFollowed] = useState<string[]>([]);
  const all = devices.data?.devices ?? [];
  const labels = [...new Set(all.flatMap((d) => d.labels ?? []))].sort();
  const shown = all
    .filter((d) => d.name.toLowerCase().includes(q.trim().toLowerCase()))
    .filter((d) => !label || (d.labels ?? []).includes(label))
    .sort((a, b) => a.name.localeCompare(b.name));
  return (
    <section aria-labelledby="devices-h">
      <h1 id="devices-h">Devices</h1>
      <Problem l={devices} what="the devices" />
      <Problem l={summaries} what="when the devices were last heard from" />
      <div class="filters">
        <label>
          Search
          <input type="search" value={q} onInput={(e) => setQ(e.currentTarget.value)} />
        </label>
        <label>
          Label
          <select value={label} onChange={(e) => setLabel(e.currentTarget.value)}>
            <option value="">Any</option>
            {labels.map((l) => (
              <option key={l} value={l}>
                {l}
              </option>
            ))}
          </select>
        </label>
      </div>
      <p class="muted" role="status">
        {shown.length} of {all.length} devices
        {followed.length > 0 && (
          <>
            {" · "}
            <a href={href({ page: "follow", names: followed })}>Follow {followed.length} live</a>
          </>
        )}
      </p>
      <ul class="cards">
        {shown.map((d) => (
          <li key={d.name} class="card">
            <a href={href({ page: "device", name: d.name })}>{d.name}</a>
            <span class="muted">{d.profileName}</span>
            <span>
              <span class={`status ${d.operatingState === "UP" ? "up" : "down"}`}>{d.operatingState}</span>{" "}
              <span class="muted">{d.adminState}</span>
            </span>
            {(d.labels ?? []).length > 0 && <span class="labels">{(d.labels ?? []).join(", ")}</span>}
            <span class="muted" data-last-seen={d.name}>
              {heard.has(d.name) ? `Last reading ${age(heard.get(d.name) ?? 0)} ago` : summaries.data ? "No readings stored" : ""}
            </span>
            <label class="follow">
              <input
                type="checkbox"
                checked={followed.includes(d.name)}
                onChange={(e) => {
                  const on = e.currentTarget.checked;
                  setFollowed((f) => (on ? [...f, d.name] : f.filter((n) => n !== d.name)));
                }}
              />
              Follow {d.name}
            </label>
          </li>
        ))}
      </ul>
    </section>
  );
}
