// What the browser scripts share: their settings from the environment, Debian's chromium
// started headless with the flags that keep it off the network, and logging in.
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

/** Logs `user` in on the console's login form (a page or the dialog over one), and waits
 * until the console is theirs. */
export async function logInAs(page, user, password) {
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("button", { name: "Log out" }).waitFor();
}

/** Waits until the element `locator` finds has the focus (a page moves it in an effect, a
 * frame or so after the click that asked for it). */
export async function waitForFocus(locator, timeout = 5000) {
  const el = await locator.elementHandle();
  await locator.page().waitForFunction((e) => e === document.activeElement, el, { timeout });
}
