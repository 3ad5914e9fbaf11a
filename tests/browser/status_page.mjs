// Drives the controller's status page in Debian's Chromium (headless) the way an operator would, and prints what
// it saw as JSON for tests/tests/browser.rs to assert. Input (environment): BASE_URL, TOKEN, SHOTS (a directory for
// screenshots), TASKS (JSON: {succeeded, failed, long, waiting} task ids).
import { chromium } from "playwright-core";

const base = process.env.BASE_URL;
const token = process.env.TOKEN;
const shots = process.env.SHOTS;
const tasks = JSON.parse(process.env.TASKS);
const seen = {};

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  // Not logged in: any page leads to the login form.
  const anonymous = await browser.newPage();
  await anonymous.goto(`${base}/tasks/${tasks.failed}`);
  seen.anonymousUrl = new URL(anonymous.url()).pathname;
  seen.anonymousSeesTask = (await anonymous.content()).includes(tasks.failed);
  await anonymous.close();

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  let bytes = 0;
  page.on("response", async (response) => {
    try { bytes += (await response.body()).length; } catch { /* redirects have no body */ }
  });
  await page.goto(`${base}/`);
  await page.getByLabel("Login token").fill("wrong.token");
  await page.getByRole("button", { name: "Log in" }).click();
  seen.wrongLogin = await page.getByRole("alert").innerText();
  await page.getByLabel("Login token").fill(token);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${base}/`);

  // The fleet: measured on a fresh load of the page.
  bytes = 0;
  const started = Date.now();
  await page.goto(`${base}/`, { waitUntil: "load" });
  seen.fleetLoadMs = Date.now() - started;
  seen.fleetBytes = bytes;
  seen.firstContentfulPaintMs = await page.evaluate(() => {
    const paint = performance.getEntriesByName("first-contentful-paint")[0];
    return paint ? Math.round(paint.startTime) : null;
  });
  const workers = page.getByRole("table", { name: "Workers" });
  seen.workers = await workers.locator("tbody tr").evaluateAll((rows) =>
    rows.map((row) => Array.from(row.cells).map((cell) => cell.innerText.trim())));
  const pools = page.getByRole("table", { name: "Pools" });
  seen.pools = await pools.locator("tbody tr").evaluateAll((rows) =>
    rows.map((row) => Array.from(row.cells).map((cell) => cell.innerText.trim())));
  seen.failures = await page.getByRole("table", { name: "Recent failures" }).innerText();
  await page.screenshot({ path: `${shots}/fleet.png`, fullPage: true });

  // Keyboard: the first Tab reaches the skip link; every form field has a label.
  await page.keyboard.press("Tab");
  seen.firstTab = await page.evaluate(() => document.activeElement.textContent);
  await page.goto(`${base}/tasks`);
  seen.unlabelledFields = await page.evaluate(() =>
    Array.from(document.querySelectorAll("input, select")).filter((e) => !e.labels || e.labels.length === 0).length);
  await page.getByLabel("State").selectOption("FAILED");
  await page.getByRole("button", { name: "Show" }).click();
  seen.failedListing = await page.getByRole("table", { name: "Tasks, newest first" }).innerText();

  // The long task: its log tail grows on the page without a reload.
  await page.goto(`${base}/tasks/${tasks.long}`);
  const log = page.locator("pre.log").first();
  await log.waitFor({ timeout: 60000 });
  seen.logAtFirst = (await log.innerText()).length;
  let navigations = 0;
  page.on("framenavigated", () => { navigations += 1; });
  await page.waitForFunction(
    (before) => { const pre = document.querySelector("pre.log"); return pre && pre.innerText.length > before; },
    seen.logAtFirst, { timeout: 90000, polling: 500 });
  seen.logLater = (await page.locator("pre.log").first().innerText()).length;
  seen.reloadsWhileGrowing = navigations;

  // The failed task: its error and report.
  await page.goto(`${base}/tasks/${tasks.failed}`);
  seen.failedState = await page.locator(".facts dd .badge").first().innerText();
  seen.failedReport = await page.getByRole("region", { name: "Result" }).innerText();
  await page.screenshot({ path: `${shots}/task.png`, fullPage: true });

  // The waiting task: why it waits.
  await page.goto(`${base}/tasks/${tasks.waiting}`);
  seen.waitingWhy = await page.locator(".why").innerText();

  // A phone: the page fits the screen (wide tables scroll inside their own box).
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${base}/`);
  seen.phoneOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: `${shots}/fleet-phone.png`, fullPage: true });

  // Logging out ends the session.
  await page.getByRole("button", { name: "Log out" }).click();
  await page.goto(`${base}/tasks`);
  seen.afterLogout = new URL(page.url()).pathname;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
