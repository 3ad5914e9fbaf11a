// Drives the status page's operator actions in Debian's Chromium (headless) and prints what it saw as JSON for
// tests/tests/browser.rs. Input (environment): BASE_URL, OPERATOR and VIEWER (login tokens), TASK (a long run's id).
import { chromium } from "playwright-core";

const base = process.env.BASE_URL;
const task = process.env.TASK;
const seen = {};

async function logIn(browser, token) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${base}/login`);
  await page.getByLabel("Login token").fill(token);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${base}/`);
  return page;
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  // A viewer: no buttons anywhere, no audit page, and a post made by hand (with its own cookie) is refused.
  const viewer = await logIn(browser, process.env.VIEWER);
  seen.viewerDrainButtons = await viewer.getByRole("button", { name: /^Drain / }).count();
  seen.viewerNavAudit = await viewer.getByRole("link", { name: "Audit" }).count();
  await viewer.goto(`${base}/tasks/${task}`);
  seen.viewerCancelButtons = await viewer.getByRole("button", { name: "Cancel" }).count();
  const forged = await viewer.request.post(`${base}/tasks/${task}/cancel`, {
    form: { csrf: "0".repeat(64), reason: "forged" }, maxRedirects: 0,
  });
  seen.viewerForgedStatus = forged.status();
  seen.viewerForgedText = await forged.text();
  seen.viewerAuditStatus = (await viewer.request.get(`${base}/audit`)).status();

  // An operator: the buttons are there; a post without the page's form token is refused.
  const operator = await logIn(browser, process.env.OPERATOR);
  seen.operatorDrainButtons = await operator.getByRole("button", { name: /^Drain / }).count();
  const noToken = await operator.request.post(`${base}/tasks/${task}/cancel`, {
    form: { reason: "no form token" }, maxRedirects: 0,
  });
  seen.operatorNoTokenStatus = noToken.status();
  await operator.goto(`${base}/tasks/${task}`);
  seen.stateBefore = await operator.locator("dl.facts dd").first().innerText();
  await operator.getByLabel("Reason").fill("stuck run");
  await operator.getByRole("button", { name: "Cancel" }).click();
  await operator.waitForURL(`${base}/tasks/${task}`);
  // The page refreshes its live part; the run ends CANCELLED once its agent confirms (or the cancel times out).
  await operator.locator("dl.facts dd").first().filter({ hasText: "CANCELLED" }).waitFor({ timeout: 60000 });
  seen.stateAfter = await operator.locator("dl.facts dd").first().innerText();
  seen.retryButtons = await operator.getByRole("button", { name: "Retry" }).count();
  seen.operatorNavAudit = await operator.getByRole("link", { name: "Audit" }).count();
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
