// The operators' dashboard in a real browser, driven by tests/browser_dashboard.rs: headless
// Chromium (Debian's) signs in with a named token, sees the fleet, finds an org by typing part
// of its name, moves it (confirming with its id), watches the move's progress to its end,
// finds the move in the org's audit log, branches the org and keeps the branch alive; by
// keyboard where a person would use one; no console
// errors and no request beyond the control plane; screenshots at desktop and phone width.
//
// Input (environment): HEMVIST_CONTROL (the control plane's URL), HEMVIST_TOKEN, HEMVIST_ORG,
// HEMVIST_ORG_NAME_PART, HEMVIST_TO (the region), HEMVIST_ACTOR, HEMVIST_ARTIFACTS, CHROMIUM.
// playwright-core is found through NODE_PATH. Exits non-zero on failure.
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

// Watches an operation's page until it says it has ended, which must be `done`; the phases seen.
async function followToEnd(page, what) {
  const phases = new Set();
  const deadline = Date.now() + 90000;
  for (;;) {
    const phase = (await page.textContent('#phase')).trim();
    phases.add(phase);
    if (await page.getAttribute('#phase', 'data-finished') === 'true') break;
    check(Date.now() < deadline, `${what} did not end: phases seen ${[...phases]}`);
    await page.waitForTimeout(200);
  }
  const ended = (await page.textContent('#phase')).trim();
  check(ended === 'done', `${what} ended ${ended} (seen: ${[...phases]})`);
  return phases;
}

async function main() {
  const control = env('HEMVIST_CONTROL');
  const token = env('HEMVIST_TOKEN');
  const org = env('HEMVIST_ORG');
  const part = env('HEMVIST_ORG_NAME_PART');
  const to = env('HEMVIST_TO');
  const actor = env('HEMVIST_ACTOR');
  const artifacts = env('HEMVIST_ARTIFACTS');
  fs.mkdirSync(artifacts, { recursive: true });
  const origin = new URL(control).origin;
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: LAUNCH_ARGS, timeout: 30000 });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const foreign = [];
    const problems = [];
    page.on('request', (r) => { if (new URL(r.url()).origin !== origin && !r.url().startsWith('data:')) foreign.push(r.url()); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });

    // Not signed in: sent to sign in. A wrong token is refused, plainly.
    await page.goto(`${control}/orgs`);
    check(new URL(page.url()).pathname === '/signin', `not sent to sign in: ${page.url()}`);
    await page.fill('input[name=token]', 'hvt_wrong');
    await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
    check((await page.textContent('.error')).includes('not a token'), 'a wrong token is not refused plainly');
    problems.length = 0; // the 401 of the refused sign-in is logged by Chromium as a console error
    await page.fill('input[name=token]', token);
    await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
    check(new URL(page.url()).pathname === '/', `not on the fleet page: ${page.url()}`);
    const nodes = await page.locator('#nodes tbody tr').count();
    check(nodes >= 2, `the fleet shows ${nodes} nodes`);
    check((await page.locator('#nodes').textContent()).includes('healthy'), 'no healthy node shown');
    await page.screenshot({ path: path.join(artifacts, 'dashboard-fleet.png'), fullPage: true });

    // Find the org by typing part of its name: results update as one types.
    await page.click('a[href="/orgs"]');
    await page.waitForSelector('#q');
    await page.fill('#q', '');
    await page.focus('#q');
    await page.keyboard.type(part, { delay: 40 });
    const link = page.locator(`#results a[href="/orgs/${org}"]`);
    await link.waitFor({ timeout: 10000 });
    const shown = await page.locator('#results tbody tr').count();
    check(shown >= 1, 'no result row');
    await page.screenshot({ path: path.join(artifacts, 'dashboard-search.png'), fullPage: true });
    await link.focus();
    await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
    check(new URL(page.url()).pathname === `/orgs/${org}`, `not on the org's page: ${page.url()}`);

    // A confirmation that does not name the org moves nothing.
    const move = page.locator(`form[action="/orgs/${org}/move"]`);
    await move.locator('select[name=to]').selectOption(to);
    await move.locator('input[name=confirm]').fill(`${org}-not`);
    await move.locator('input[name=confirm]').evaluate((e) => e.removeAttribute('pattern'));
    await Promise.all([page.waitForNavigation(), move.locator('button[type=submit]').click()]);
    check((await page.textContent('.error')).includes('nothing was done'), 'a wrong confirmation was not refused');
    problems.length = 0; // the refusal's 400 is logged by Chromium as a console error

    await move.locator('select[name=to]').selectOption(to);
    await move.locator('input[name=confirm]').fill(org);
    await Promise.all([page.waitForNavigation(), move.locator('button[type=submit]').click()]);
    check(/^\/operations\/move-/.test(new URL(page.url()).pathname), `not on the move's page: ${page.url()}`);
    const phases = await followToEnd(page, 'the move');
    check(phases.size >= 2, `the page did not follow the move live (seen: ${[...phases]})`);
    await page.screenshot({ path: path.join(artifacts, 'dashboard-move.png'), fullPage: true });

    // The audit log names the move and who asked for it.
    await page.goto(`${control}/audit?org=${org}`);
    const rows = await page.locator('#audit tbody tr').allTextContents();
    check(rows.some((r) => r.includes('move.started') && r.includes(actor)), `no move.started by ${actor}: ${rows.slice(0, 5)}`);
    check(rows.some((r) => r.includes('move.done')), 'no move.done in the audit log');

    // A branch of the org, then kept alive: each confirmed by typing the id it acts on.
    await page.goto(`${control}/orgs/${org}`);
    const branchForm = page.locator(`form[action="/orgs/${org}/branches"]`);
    await branchForm.locator('input[name=name]').fill('review');
    await branchForm.locator('input[name=confirm]').fill(org);
    await Promise.all([page.waitForNavigation(), branchForm.locator('button[type=submit]').click()]);
    check(/^\/operations\/branch-/.test(new URL(page.url()).pathname), `not on the branch's operation: ${page.url()}`);
    await followToEnd(page, 'the branch');
    await page.goto(`${control}/orgs/${org}`);
    const branch = `${org}--review`;
    check((await page.textContent('#branches')).includes(branch), 'the branch is not listed');
    const keep = page.locator(`form[action="/branches/${branch}/keepalive"]`);
    await keep.locator('input[name=confirm]').fill(branch);
    await Promise.all([page.waitForNavigation(), keep.locator('button[type=submit]').click()]);
    const notice = await page.textContent('.notice');
    check(notice.includes(`Kept alive: ${branch}`), `no keepalive notice: ${notice}`);

    // The org's page at phone width: laid out, nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${control}/orgs/${org}`);
    const home = await page.textContent('dl');
    check(home.includes(to), `the org's page does not show its new home: ${home}`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `the page is ${overflow}px wider than a phone`);
    await page.screenshot({ path: path.join(artifacts, 'dashboard-org-phone.png'), fullPage: true });

    check(foreign.length === 0, `requests beyond the control plane: ${foreign.join(', ')}`);
    check(problems.length === 0, problems.join('\n'));
    console.log(`ok: ${nodes} nodes, phases ${[...phases].join(' > ')}, ${rows.length} audit rows`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e instanceof Failure ? `FAILED: ${e.message}` : e);
  process.exit(1);
});
