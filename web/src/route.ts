// Where the console is: the location's hash (`#/devices`, `#/device/<name>`,
// `#/follow/<name>,<name>` for several devices' live charts on one page, `#/profiles`,
// `#/data` for rules and export, `#/firmware`, `#/access`), so a reload or a shared link
// opens the same page and the gateway serves one file for all of them.

export type Route =
  | { page: "overview" }
  | { page: "devices" }
  | { page: "device"; name: string }
  | { page: "follow"; names: string[] }
  | { page: "profiles" }
  | { page: "data" }
  | { page: "firmware" }
  | { page: "access" };

/** The pages reached from the main navigation, in its order, with their titles. */
export const SECTIONS = [
  { page: "overview", title: "Overview" },
  { page: "devices", title: "Devices" },
  { page: "profiles", title: "Profiles" },
  { page: "data", title: "Rules & export" },
  { page: "firmware", title: "Firmware" },
  { page: "access", title: "Access" },
] as const;

export type Section = (typeof SECTIONS)[number]["page"];

/** The section a page belongs to (a device's page is under Devices). */
export function section(r: Route): Section {
  return r.page === "device" || r.page === "follow" ? "devices" : r.page;
}

export function parse(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter((p) => p.length > 0);
  if (parts[0] === "device" && parts[1]) return { page: "device", name: decodeURIComponent(parts[1]) };
  if (parts[0] === "follow" && parts[1]) {
    return { page: "follow", names: parts[1].split(",").filter((n) => n).map(decodeURIComponent) };
  }
  const plain = SECTIONS.find((s) => s.page === parts[0] && s.page !== "overview");
  if (plain) return { page: plain.page } as Route;
  return { page: "overview" };
}

export function href(r: Route): string {
  switch (r.page) {
    case "overview":
      return "#/";
    case "device":
      return `#/device/${encodeURIComponent(r.name)}`;
    case "follow":
      return `#/follow/${r.names.map(encodeURIComponent).join(",")}`;
    default:
      return `#/${r.page}`;
  }
}
