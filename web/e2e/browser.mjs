// What the browser scripts share: their settings from the environment, and Debian's
// chromium started headless with the flags that keep it off the network.
import { chromium } from "playwright-core";

/** The environment variable `k`, which must be set. */
export function env(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
}

/** Chromium (`CHROMIUM`, else /usr/bin/chromium), headless. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
