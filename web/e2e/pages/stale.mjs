// A service that stops answering, in the browser: core-metadata is paused (SIGSTOP, as a
// hung process), the devices page keeps its list and says how old it is (the gateway
// serves its last answer, marked stale), and all is fresh again once it answers. Run last,
// at desktop size only. `OUTPOST_METADATA_PID` is core-metadata's process.
import assert from "node:assert/strict";
import { env } from "../browser.mjs";

export async function stale(t) {
  if (t.label !== "desktop") return;
  const { page } = t;
  const pid = Number(env("OUTPOST_METADATA_PID"));
  t.step("core-metadata stops answering: the devices stay, with their age");
  await page.getByRole("link", { name: "Devices", exact: true }).click();
  await page.getByRole("link", { name: t.device }).waitFor();
  process.kill(pid, "SIGSTOP");
  try {
    const alert = page.getByRole("alert").filter({ hasText: "Showing what was known" });
    await alert.waitFor({ timeout: 40_000 });
    assert.match((await alert.textContent()) ?? "", /did not answer/);
    // The list is still there to work with.
    await page.getByRole("link", { name: t.device }).waitFor();
    await t.scan(page, "devices, stale");
    await t.shot("devices-stale");
  } finally {
    process.kill(pid, "SIGCONT");
  }
  t.step("core-metadata answers again: the devices are fresh");
  await page.getByRole("alert").filter({ hasText: "Showing what was known" }).waitFor({ state: "detached", timeout: 40_000 });
}
