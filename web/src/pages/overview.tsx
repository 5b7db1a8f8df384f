import { session } from "../app";
import { Problem, age, useLoad } from "../load";

interface Registration {
  serviceId: string;
  status: string;
  host: string;
  port: number;
  lastConnected?: number;
}

/** Node health: every service the registry knows, UP or DOWN, refreshed every 5 s. */
export function Overview() {
  const reg = useLoad(
    () => session.call<{ registrations: Registration[] }>("/core-keeper/api/v3/registry/all"),
    [],
    5000,
  );
  const list = [...(reg.data?.registrations ?? [])].sort((a, b) => a.serviceId.localeCompare(b.serviceId));
  const down = list.filter((r) => r.status !== "UP").length;
  return (
    <section aria-labelledby="overview-h">
      <h1 id="overview-h">Overview</h1>
      <Problem l={reg} what="the services" />
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
