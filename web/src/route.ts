// Where the console is: the location's hash (`#/devices`, `#/device/<name>`,
// `#/follow/<name>,<name>` for several devices' live charts on one page), so a reload
// or a shared link opens the same page and the gateway serves one file for all of them.

export type Route =
  | { page: "overview" }
  | { page: "devices" }
  | { page: "device"; name: string }
  | { page: "follow"; names: string[] };

export function parse(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter((p) => p.length > 0);
  if (parts[0] === "devices") return { page: "devices" };
  if (parts[0] === "device" && parts[1]) return { page: "device", name: decodeURIComponent(parts[1]) };
  if (parts[0] === "follow" && parts[1]) {
    return { page: "follow", names: parts[1].split(",").filter((n) => n).map(decodeURIComponent) };
  }
  return { page: "overview" };
}

export function href(r: Route): string {
  switch (r.page) {
    case "overview":
      return "#/";
    case "devices":
      return "#/devices";
    case "device":
      return `#/device/${encodeURIComponent(r.name)}`;
    case "follow":
      return `#/follow/${r.names.map(encodeURIComponent).join(",")}`;
  }
}
