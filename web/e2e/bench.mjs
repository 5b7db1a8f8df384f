// The console's figures (bench/run.sh console): bytes shipped for the first page
// (compressed, as on the wire), and the time from opening a device's page to its first
// chart drawn with readings, on loopback; five rounds each, in a fresh browser context.
// Then one page following OUTPOST_FOLLOW (comma-separated devices) for FOLLOW_SECONDS
// (300): the JavaScript heap and DOM size every 30 s, and the frames drawn and those
// longer than two frame times, from the browser's own counters.
//   OUTPOST_URL, OUTPOST_ADMIN, OUTPOST_DEVICE as for console.mjs.
import { env, launch, logInAs } from "./browser.mjs";

const base = env("OUTPOST_URL");
const admin = env("OUTPOST_ADMIN");
const device = env("OUTPOST_DEVICE");
const rounds = Number(process.env.ROUNDS ?? 5);

const browser = await launch();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const firstPage = [];
const deviceBytes = [];
const toChart = [];
try {
  for (let i = 0; i < rounds; i++) {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    let bytes = 0;
    cdp.on("Network.loadingFinished", (e) => (bytes += e.encodedDataLength));
    await page.goto(`${base}/ui/`, { waitUntil: "load" });
    await page.getByRole("button", { name: "Log in" }).waitFor();
    firstPage.push(bytes);
    await logInAs(page, "admin", admin);
    const before = bytes;
    const started = Date.now();
    await page.evaluate((h) => (location.hash = h), `#/device/${encodeURIComponent(device)}`);
    await page.waitForFunction(
      () => Number(document.querySelector("[data-latest]")?.getAttribute("data-points") ?? 0) > 0,
      null,
      { timeout: 30_000, polling: "raf" },
    );
    toChart.push(Date.now() - started);
    deviceBytes.push(bytes - before);
    await context.close();
  }
  const follow = (process.env.OUTPOST_FOLLOW ?? "").split(",").filter((d) => d);
  if (follow.length > 0) {
    const seconds = Number(process.env.FOLLOW_SECONDS ?? 300);
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send("Performance.enable");
    await page.goto(`${base}/ui/`);
    await logInAs(page, "admin", admin);
    await page.evaluate((h) => (location.hash = h), `#/follow/${follow.map(encodeURIComponent).join(",")}`);
    await page.waitForFunction((n) => document.querySelectorAll('[data-live="live"]').length >= n, follow.length, {
      timeout: 60_000,
    });
    // Frames as the page draws them: every animation frame, and those that came late.
    await page.evaluate(() => {
      const w = window;
      w.__frames = { n: 0, late: 0, last: performance.now() };
      const tick = (t) => {
        const f = w.__frames;
        f.n++;
        if (t - f.last > 2 * (1000 / 60)) f.late++;
        f.last = t;
        requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    });
    const metric = (ms, name) => ms.metrics.find((m) => m.name === name)?.value ?? 0;
    const rows = [];
    for (let t = 0; t <= seconds; t += 30) {
      if (t > 0) await page.waitForTimeout(30_000);
      await cdp.send("HeapProfiler.collectGarbage").catch(() => undefined);
      const m = await cdp.send("Performance.getMetrics");
      const frames = await page.evaluate(() => ({ ...window.__frames }));
      const points = await page.evaluate(() =>
        [...document.querySelectorAll("[data-latest]")].reduce((a, e) => a + Number(e.getAttribute("data-points") ?? 0), 0),
      );
      rows.push({ t, heap: metric(m, "JSHeapUsedSize"), nodes: metric(m, "Nodes"), frames, points });
      console.log(
        `  ${t}s: heap ${(metric(m, "JSHeapUsedSize") / 1048576).toFixed(2)} MiB, ${metric(m, "Nodes")} DOM nodes, ` +
          `${points} points on the charts, frames ${frames.n} (${frames.late} late)`,
      );
    }
    const first = rows.find((r) => r.t >= 60) ?? rows[0];
    const last = rows[rows.length - 1];
    const frames = last.frames.n - first.frames.n;
    const late = last.frames.late - first.frames.late;
    const span = last.t - first.t;
    console.log(
      `following ${follow.length} devices for ${seconds} s: heap ${(first.heap / 1048576).toFixed(2)} MiB at ${first.t} s, ` +
        `${(last.heap / 1048576).toFixed(2)} MiB at ${last.t} s; ${(frames / Math.max(1, span)).toFixed(1)} frames/s, ` +
        `${late} of ${frames} late (${((100 * late) / Math.max(1, frames)).toFixed(2)} %)`,
    );
    await context.close();
  }
} finally {
  await browser.close();
}
const kb = (b) => (b / 1024).toFixed(1);
console.log(`first page (login), bytes on the wire: median ${kb(median(firstPage))} KiB (${firstPage.map(kb).join(", ")})`);
console.log(`device page with its charts, more bytes: median ${kb(median(deviceBytes))} KiB (${deviceBytes.map(kb).join(", ")})`);
console.log(`open a device page -> first chart drawn with readings: median ${median(toChart)} ms (${toChart.join(", ")})`);
