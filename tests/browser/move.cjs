// A signed-in user in a real browser while their org moves, driven by tests/browser_move.rs
// against a running cluster: headless Chromium (Debian's, never Playwright's download).
//
// HEMVIST_PHASE=move: signs in at the old home through the form, adds a contact, leaves a second
// tab with a filled-in form open, moves the org itself (admin API) and waits until the move is
// done; then the open form is sent, the search page left open is typed into, and another contact
// is added: every step must end at the new home, signed in, never on a sign-in page, with no
// hand-off left in the address. Saves the browser's cookies to HEMVIST_STATE.
// HEMVIST_PHASE=notice: a browser holding only the old home's cookie opens the org at the old
// home (which no longer knows the org): it lands on the new home's sign-in page, told why, and
// signs in there.
//
// Input (environment): HEMVIST_OLD, HEMVIST_NEW (node URLs), HEMVIST_CONTROL, HEMVIST_TOKEN
// (admin API), HEMVIST_ORG, HEMVIST_EMAIL, HEMVIST_PASSWORD, HEMVIST_CONTACTS (JSON: before,
// after, left_open, city), HEMVIST_STATE (file), HEMVIST_ARTIFACTS (directory), CHROMIUM.
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

const MOVE_TIMEOUT_MS = 60000;
const STEP_TIMEOUT_MS = 15000;
const MOVED_NOTICE = 'This organization has moved to a new home; please sign in again.';
const LAUNCH_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

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
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Everything a page does that it should not: requests off the two nodes, errors, sign-in pages
// after the first, a hand-off left in the address.
function watch(page, label, origins, problems, visits) {
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (!['data:', 'blob:', 'about:'].includes(u.protocol) && !origins.includes(u.origin)) {
      problems.push(`${label}: request to another host: ${r.method()} ${r.url()}`);
    }
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`${label}: HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
  });
  page.on('requestfailed', (r) => {
    problems.push(`${label}: request failed: ${r.method()} ${r.url()}: ${r.failure() && r.failure().errorText}`);
  });
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`${label}: console error on ${page.url()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${label}: page error: ${e.message}`));
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) visits.push(`${label} ${f.url()}`);
  });
}

async function signIn(page, base, org, email, password) {
  step(`open ${base}/o/${org}/`);
  await page.goto(`${base}/o/${org}/`);
  check(new URL(page.url()).pathname === `/o/${org}/signin`, `expected the sign-in page, got ${page.url()}`);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await Promise.all([
    page.waitForURL((u) => u.pathname === `/o/${org}/`, { waitUntil: 'load' }),
    page.click('form.card button[type=submit]'),
  ]);
  await page.waitForSelector('#q');
}

async function fillContact(page, name, city) {
  await page.fill('input[name=name]', name);
  await page.fill('input[name=city]', city);
  await page.fill('input[name=company]', 'Fjord Bok');
}

// Saves the contact form on `page`; waits for the saved contact's page at `origin`.
async function save(page, org, origin) {
  await Promise.all([
    page.waitForURL(
      (u) => u.origin === origin && u.pathname.startsWith(`/o/${org}/contacts/`) && u.searchParams.has('saved'),
      { waitUntil: 'load', timeout: STEP_TIMEOUT_MS },
    ),
    page.click('form.card button[type=submit]'),
  ]);
  const notice = await page.textContent('p.notice').catch(() => null);
  check(notice && notice.includes('Saved'), `no "Saved." on ${page.url()}`);
}

async function shownNames(page) {
  return page.$$eval('#results ol.hits li .name', (all) => all.map((e) => e.textContent.trim()));
}

async function admin(control, token, method, p, body) {
  const resp = await fetch(`${control}/api/v1${p}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await resp.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch (e) {
    json = text;
  }
  return { status: resp.status, json };
}

async function moveOrg(control, token, org, to) {
  const started = await admin(control, token, 'POST', `/orgs/${org}/move`, { to });
  check(started.status === 202, `the move was not started: ${started.status} ${JSON.stringify(started.json)}`);
  const id = started.json.id;
  step(`move ${id} started`);
  const deadline = Date.now() + MOVE_TIMEOUT_MS;
  let last = '';
  for (;;) {
    const op = await admin(control, token, 'GET', `/operations/${encodeURIComponent(id)}`);
    check(op.status === 200, `operation ${id}: ${op.status} ${JSON.stringify(op.json)}`);
    if (op.json.phase !== last) {
      last = op.json.phase;
      step(`move ${id}: ${last}`);
    }
    if (last === 'done') return op.json;
    check(!['rolled_back', 'rolling_back'].includes(last), `the move rolled back: ${JSON.stringify(op.json)}`);
    check(Date.now() < deadline, `the move did not finish within ${MOVE_TIMEOUT_MS} ms: ${JSON.stringify(op.json)}`);
    await sleep(100);
  }
}

async function moved(browser, cfg, problems, visits) {
  const { oldHome, newHome, org, email, password, contacts } = cfg;
  const origins = [new URL(oldHome).origin, new URL(newHome).origin];
  const newOrigin = new URL(newHome).origin;

  // The user's tab: signed in at the old home, one contact added, back on the search page.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  watch(page, 'tab', origins, problems, visits);
  await signIn(page, oldHome, org, email, password);
  step(`signed in at ${page.url()}`);
  await page.click('a[href$="/contacts/new"]');
  await page.waitForSelector('form.card');
  await fillContact(page, contacts.before, contacts.city);
  await save(page, org, new URL(oldHome).origin);
  step(`added ${contacts.before} at ${page.url()}`);
  await Promise.all([page.waitForURL((u) => u.pathname === `/o/${org}/`), page.click('text=← Back to search')]);
  await page.waitForFunction(() => window.htmx !== undefined && document.readyState === 'complete');

  // A second browser (its own session) with a filled-in form left open across the move.
  const other = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  other.setDefaultTimeout(STEP_TIMEOUT_MS);
  const form = await other.newPage();
  watch(form, 'form', origins, problems, visits);
  await signIn(form, oldHome, org, email, password);
  await form.goto(`${oldHome}/o/${org}/contacts/new`);
  await fillContact(form, contacts.left_open, contacts.city);
  step('a filled-in form is left open');

  await moveOrg(cfg.control, cfg.token, org, 'eu-central');

  // The form left open is sent: to the old home, which sends it on, still signed in.
  await save(form, org, newOrigin);
  step(`the form left open was saved at ${form.url()}`);

  // The search page left open is typed into: htmx asks the old home, which sends the browser on.
  await Promise.all([
    page.waitForURL((u) => u.origin === newOrigin && u.pathname === `/o/${org}/`, { waitUntil: 'load' }),
    page.fill('#q', contacts.before),
  ]);
  await page.waitForSelector('#q');
  step(`typing led to ${page.url()}`);
  check(new URL(page.url()).searchParams.get('q') === contacts.before, `the query was lost: ${page.url()}`);
  const found = await shownNames(page);
  check(found.includes(contacts.before), `${contacts.before} not found at the new home: ${JSON.stringify(found)}`);

  // Another contact, through the form, at the new home; then a search finds both.
  await page.click('a[href$="/contacts/new"]');
  await page.waitForSelector('form.card');
  check(new URL(page.url()).origin === newOrigin, `the new contact form is not at the new home: ${page.url()}`);
  await fillContact(page, contacts.after, contacts.city);
  await save(page, org, newOrigin);
  step(`added ${contacts.after} at ${page.url()}`);
  await Promise.all([page.waitForURL((u) => u.pathname === `/o/${org}/`), page.click('text=← Back to search')]);
  await page.waitForFunction(() => window.htmx !== undefined && document.readyState === 'complete');
  await page.focus('#q');
  await page.keyboard.type(contacts.city);
  await page.waitForFunction(
    (city) => {
      const count = document.querySelector('#results #count');
      return count && count.textContent.includes(`\u201c${city}\u201d`) && !document.querySelector('.htmx-request');
    },
    contacts.city,
  );
  const all = await shownNames(page);
  step(`"${contacts.city}" finds ${JSON.stringify(all)}`);
  for (const name of [contacts.before, contacts.after, contacts.left_open]) {
    check(all.includes(name), `"${contacts.city}" does not find ${name} at the new home: ${JSON.stringify(all)}`);
  }

  for (const p of [page, form]) {
    const u = new URL(p.url());
    check(u.origin === newOrigin, `a tab ended at ${p.url()}, not at the new home`);
    check(!u.searchParams.has('hv_handoff'), `a hand-off is left in the address: ${p.url()}`);
  }
  const history = await page.evaluate(() => history.length);
  step(`the tab's history holds ${history} entries`);
  const signins = visits.filter((v) => v.includes('/signin'));
  check(signins.length === 2, `a sign-in page was shown after the first ones: ${JSON.stringify(signins)}`);
  check(
    !visits.some((v) => v.includes('hv_handoff=')),
    `a page was left showing a hand-off in its address: ${JSON.stringify(visits.filter((v) => v.includes('hv_handoff=')))}`,
  );

  const shot = path.join(cfg.artifacts, 'move.png');
  await page.screenshot({ path: shot, fullPage: true });
  step(`screenshot ${shot}`);
  fs.writeFileSync(cfg.state, JSON.stringify(await context.storageState()));
  await other.close();
  return page;
}

async function notice(browser, cfg, problems, visits) {
  const { oldHome, newHome, org, email, password } = cfg;
  const oldHost = new URL(oldHome).hostname;
  const newOrigin = new URL(newHome).origin;
  const saved = JSON.parse(fs.readFileSync(cfg.state, 'utf8'));
  const cookies = saved.cookies.filter((c) => c.domain === oldHost);
  check(cookies.some((c) => c.name === 'hv_session'), `no session cookie of ${oldHost} saved: ${JSON.stringify(saved.cookies.map((c) => `${c.name}@${c.domain}`))}`);
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, storageState: { cookies, origins: [] } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  watch(page, 'returning', [new URL(oldHome).origin, newOrigin], problems, visits);
  step(`open ${oldHome}/o/${org}/ with the old home's cookie only`);
  await page.goto(`${oldHome}/o/${org}/`);
  const u = new URL(page.url());
  check(u.origin === newOrigin && u.pathname === `/o/${org}/signin`, `expected the new home's sign-in page, got ${page.url()}`);
  const shown = (await page.textContent('#moved').catch(() => '')) || '';
  check(shown.trim() === MOVED_NOTICE, `the sign-in page does not say why: ${JSON.stringify(shown)}`);
  const shot = path.join(cfg.artifacts, 'move-notice.png');
  await page.screenshot({ path: shot, fullPage: true });
  step(`screenshot ${shot}`);

  // Signing in there leads to the org's page, without the notice's parameter.
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await Promise.all([
    page.waitForURL((u) => u.origin === newOrigin && u.pathname === `/o/${org}/`, { waitUntil: 'load' }),
    page.click('form.card button[type=submit]'),
  ]);
  await page.waitForSelector('#q');
  check(!new URL(page.url()).searchParams.has('hv_moved'), `signed in at ${page.url()}`);
  const names = await shownNames(page);
  check(names.length >= 3, `signed in again, the page shows ${JSON.stringify(names)}`);
  step(`signed in again at ${page.url()}: ${names.length} contacts`);
  return page;
}

async function main() {
  const cfg = {
    phase: env('HEMVIST_PHASE'),
    oldHome: env('HEMVIST_OLD').replace(/\/$/, ''),
    newHome: env('HEMVIST_NEW').replace(/\/$/, ''),
    control: env('HEMVIST_CONTROL').replace(/\/$/, ''),
    token: env('HEMVIST_TOKEN'),
    org: env('HEMVIST_ORG'),
    email: env('HEMVIST_EMAIL'),
    password: env('HEMVIST_PASSWORD'),
    contacts: JSON.parse(env('HEMVIST_CONTACTS')),
    state: env('HEMVIST_STATE'),
    artifacts: env('HEMVIST_ARTIFACTS'),
  };
  fs.mkdirSync(cfg.artifacts, { recursive: true });
  check(new URL(cfg.oldHome).hostname !== new URL(cfg.newHome).hostname, 'the two homes must have different host names, or they share cookies');
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  check(fs.existsSync(executablePath), `Chromium is missing at ${executablePath}: run scripts/setup`);
  const problems = [];
  const visits = [];

  step(`launching ${executablePath}`);
  const browser = await chromium.launch({ executablePath, args: LAUNCH_ARGS, timeout: 30000 });
  let page;
  try {
    step(`browser ${browser.version()}`);
    if (cfg.phase === 'move') {
      page = await moved(browser, cfg, problems, visits);
    } else if (cfg.phase === 'notice') {
      page = await notice(browser, cfg, problems, visits);
    } else {
      throw new Failure(`unknown HEMVIST_PHASE ${cfg.phase}`);
    }
    check(problems.length === 0, `the pages misbehaved:\n  ${problems.join('\n  ')}`);
    step(`ok: ${visits.length} pages`);
  } catch (e) {
    const pages = browser.contexts().flatMap((c) => c.pages());
    for (const [i, p] of pages.entries()) {
      const shot = path.join(cfg.artifacts, i === 0 ? 'move-failure.png' : `move-failure-${i}.png`);
      await p.screenshot({ path: shot, fullPage: true }).catch(() => {});
      console.error(`screenshot of the failure (${p.url()}): ${shot}`);
    }
    if (problems.length > 0) console.error(`also seen:\n  ${problems.join('\n  ')}`);
    console.error(`pages visited:\n  ${visits.join('\n  ')}`);
    throw e;
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`FAILED: ${e instanceof Failure ? e.message : e.stack || e}`);
    process.exit(1);
  },
);
