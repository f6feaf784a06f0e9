// A signed-in user on a branch's pages in a real browser, driven by tests/browser_branch.rs
// against a running cluster: headless Chromium (Debian's, never Playwright's download).
//
// The user signs in to the branch, sees the banner (a branch of what, as of when, until when,
// and the warning once inside the warning window), presses "Keep alive", and sees the expiry
// pushed out on the page it comes back to; the control plane (admin API) says the same.
//
// Input (environment): HEMVIST_BASE (the branch's node), HEMVIST_CONTROL, HEMVIST_TOKEN (admin
// API), HEMVIST_ORG (the branch), HEMVIST_PARENT, HEMVIST_EMAIL, HEMVIST_PASSWORD,
// HEMVIST_ARTIFACTS (directory), CHROMIUM. playwright-core is found through NODE_PATH. Exits
// non-zero on failure.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

let chromium;
try {
  ({ chromium } = require('playwright-core'));
} catch (e) {
  console.error(`playwright-core is not installed (NODE_PATH=${process.env.NODE_PATH || ''}): run scripts/setup\n${e.message}`);
  process.exit(2);
}

const STEP_TIMEOUT_MS = 15000;
const LAUNCH_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

class Failure extends Error {}
function check(ok, message) {
  if (!ok) throw new Failure(message);
}
function env(name) {
  const v = process.env[name];
  if (!v) throw new Failure(`${name} is not set`);
  return v;
}
const started = Date.now();
function step(what) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);
}

async function branchView(control, token, org) {
  const resp = await fetch(`${control}/api/v1/branches/${org}`, { headers: { authorization: `Bearer ${token}` } });
  check(resp.status === 200, `GET /branches/${org}: ${resp.status}`);
  return resp.json();
}

async function main() {
  const base = env('HEMVIST_BASE').replace(/\/$/, '');
  const control = env('HEMVIST_CONTROL').replace(/\/$/, '');
  const token = env('HEMVIST_TOKEN');
  const org = env('HEMVIST_ORG');
  const parent = env('HEMVIST_PARENT');
  const artifacts = env('HEMVIST_ARTIFACTS');
  fs.mkdirSync(artifacts, { recursive: true });
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const browser = await chromium.launch({ executablePath, args: LAUNCH_ARGS, timeout: 30000 });
  const problems = [];
  try {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
    context.setDefaultTimeout(STEP_TIMEOUT_MS);
    const page = await context.newPage();
    page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));

    step(`open ${base}/o/${org}/`);
    await page.goto(`${base}/o/${org}/`);
    check(new URL(page.url()).pathname === `/o/${org}/signin`, `expected the sign-in page, got ${page.url()}`);
    const signinBanner = (await page.textContent('#branch').catch(() => '')) || '';
    check(signinBanner.includes('Test branch') && signinBanner.includes(parent), `the sign-in page has no branch banner: ${JSON.stringify(signinBanner)}`);
    await page.fill('input[name=email]', env('HEMVIST_EMAIL'));
    await page.fill('input[name=password]', env('HEMVIST_PASSWORD'));
    await Promise.all([
      page.waitForURL((u) => u.pathname === `/o/${org}/`, { waitUntil: 'load' }),
      page.click('form.card button[type=submit]'),
    ]);
    await page.waitForSelector('#q');

    const banner = await page.textContent('#branch');
    step(`banner: ${banner.replace(/\s+/g, ' ').trim()}`);
    check(banner.includes('Test branch') && banner.includes(parent), `no banner naming ${parent}: ${banner}`);
    check(banner.includes('Expires soon'), `inside its warning window, the banner does not warn: ${banner}`);
    const before = await page.getAttribute('#expiry time', 'datetime');
    const viewBefore = await branchView(control, token, org);
    check(new Date(before).getTime() === viewBefore.expires_ms, `the banner's expiry ${before} is not the control plane's ${viewBefore.expires_ms}`);
    await page.screenshot({ path: path.join(artifacts, 'branch.png'), fullPage: true });

    step('press Keep alive');
    await Promise.all([
      page.waitForURL((u) => u.pathname === `/o/${org}/`, { waitUntil: 'load' }),
      page.click('#keepalive'),
    ]);
    await page.waitForSelector('#branch');
    const after = await page.getAttribute('#expiry time', 'datetime');
    step(`expiry ${before} -> ${after}`);
    check(new Date(after).getTime() > new Date(before).getTime(), `the expiry did not move: ${before} -> ${after}`);
    const viewAfter = await branchView(control, token, org);
    check(viewAfter.expires_ms === new Date(after).getTime(), `the page says ${after}, the control plane ${viewAfter.expires_ms}`);
    await page.screenshot({ path: path.join(artifacts, 'branch-kept-alive.png'), fullPage: true });
    check(problems.length === 0, `the pages misbehaved:\n  ${problems.join('\n  ')}`);
    step('ok');
  } catch (e) {
    for (const [i, p] of browser.contexts().flatMap((c) => c.pages()).entries()) {
      await p.screenshot({ path: path.join(artifacts, `branch-failure-${i}.png`), fullPage: true }).catch(() => {});
    }
    if (problems.length > 0) console.error(`also seen:\n  ${problems.join('\n  ')}`);
    throw e;
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e instanceof Failure ? `FAILED: ${e.message}` : e);
  process.exit(1);
});
