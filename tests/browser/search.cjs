// The search page in a real browser, driven by tests/browser.rs against a running cluster:
// headless Chromium (Debian's, never Playwright's download) signs in, types a name one key at a
// time, and checks that the results follow and narrow; screenshots go to HEMVIST_ARTIFACTS.
//
// Input (environment): HEMVIST_BASE (node URL), HEMVIST_ORG, HEMVIST_EMAIL, HEMVIST_PASSWORD,
// HEMVIST_TYPE (what to type), HEMVIST_EXPECT (JSON: for each prefix typed, the names the search
// must find), HEMVIST_ARTIFACTS (directory), CHROMIUM (default /usr/bin/chromium).
// playwright-core is found through NODE_PATH (CommonJS honours it). Exits non-zero on failure.
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

const KEY_TIMEOUT_MS = 5000; // for the results to follow one keystroke
const PAUSE_MS = 150; // between keys, like a quick typist
const PAGE_SIZE = 20; // hits on the first page of results
const PHONE = { width: 390, height: 844 };
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
const same = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());

// What a page shows of the results.
async function results(page) {
  return page.evaluate(() => {
    const count = document.querySelector('#results #count');
    const text = count ? count.textContent.trim() : '';
    const m = /^(\d+)(\+?)/.exec(text);
    return {
      countText: text,
      total: m ? Number(m[1]) : null,
      items: document.querySelectorAll('#results ol.hits li').length,
      names: [...document.querySelectorAll('#results ol.hits li .name')].map((e) => e.textContent.trim()),
      marks: [...document.querySelectorAll('#results ol.hits mark')].map((e) => e.textContent),
      all: document.querySelector('#results') ? document.querySelector('#results').innerText : '',
      q: document.querySelector('#q') ? document.querySelector('#q').value : null,
      search: new URL(location.href).searchParams.get('q'),
    };
  });
}

// Waits until the results are those of `typed`: the count names the query and no request is in
// flight; `before` (the results' text before the key) must have changed.
async function waitForResults(page, typed, before) {
  try {
    await page.waitForFunction(
      ([typed, before]) => {
        const results = document.querySelector('#results');
        const count = document.querySelector('#results #count');
        return (
          results &&
          count &&
          count.textContent.includes(`\u201c${typed}\u201d`) &&
          (before === null || results.innerText !== before) &&
          !document.querySelector('.htmx-request')
        );
      },
      [typed, before],
      { timeout: KEY_TIMEOUT_MS, polling: 25 },
    );
  } catch (e) {
    const now = await results(page).catch(() => ({}));
    throw new Failure(
      `the results did not follow "${typed}" within ${KEY_TIMEOUT_MS} ms: ` +
        `count says ${JSON.stringify(now.countText)}, input holds ${JSON.stringify(now.q)}`,
    );
  }
  return results(page);
}

// Everything a page does that it should not: requests off the node, console errors, failures.
function watch(page, origin, problems) {
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (!['data:', 'blob:', 'about:'].includes(u.protocol) && u.origin !== origin) {
      problems.push(`request to another host: ${r.method()} ${r.url()}`);
    }
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
  });
  page.on('requestfailed', (r) => {
    problems.push(`request failed: ${r.method()} ${r.url()}: ${r.failure() && r.failure().errorText}`);
  });
  page.on('console', (m) => {
    if (m.type() === 'error') {
      const at = m.location() && m.location().url ? ` (${m.location().url})` : '';
      problems.push(`console error on ${page.url()}: ${m.text()}${at}`);
    }
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
}

async function main() {
  const base = env('HEMVIST_BASE').replace(/\/$/, '');
  const org = env('HEMVIST_ORG');
  const email = env('HEMVIST_EMAIL');
  const password = env('HEMVIST_PASSWORD');
  const toType = env('HEMVIST_TYPE');
  const expect = JSON.parse(env('HEMVIST_EXPECT'));
  const artifacts = env('HEMVIST_ARTIFACTS');
  fs.mkdirSync(artifacts, { recursive: true });
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  check(fs.existsSync(executablePath), `Chromium is missing at ${executablePath}: run scripts/setup`);
  const origin = new URL(base).origin;
  const problems = [];

  step(`launching ${executablePath}`);
  const browser = await chromium.launch({ executablePath, args: LAUNCH_ARGS, timeout: 30000 });
  let page;
  try {
    step(`browser ${browser.version()}`);
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.setDefaultTimeout(10000);
    page = await context.newPage();
    watch(page, origin, problems);

    // Sign in: the org's page sends a stranger to the sign-in form, and back after it.
    step(`open ${base}/o/${org}/`);
    await page.goto(`${base}/o/${org}/`);
    check(
      new URL(page.url()).pathname === `/o/${org}/signin`,
      `expected the sign-in page, got ${page.url()}`,
    );
    await page.fill('input[name=email]', email);
    await page.fill('input[name=password]', password);
    step('sign in');
    await Promise.all([
      page.waitForURL((u) => u.pathname === `/o/${org}/`, { waitUntil: 'load' }),
      page.click('form.card button[type=submit]'),
    ]);
    await page.waitForSelector('#q');
    // Keys typed before htmx has wired the input would be lost.
    await page.waitForFunction(() => window.htmx !== undefined && document.readyState === 'complete');
    const initial = await results(page);
    step(`search page: ${JSON.stringify(initial.countText)}, ${initial.items} shown`);
    check(initial.items > 0, 'the search page shows no contacts before typing');

    // Type, one key at a time; after each key the list must change to that prefix's results.
    await page.focus('#q');
    let typed = '';
    let before = initial.all;
    const seen = [];
    for (const ch of toType) {
      await page.keyboard.type(ch);
      typed += ch;
      const now = await waitForResults(page, typed, before);
      before = now.all;
      seen.push({ typed, total: now.total, items: now.items });
      step(`typed ${JSON.stringify(typed)}: ${JSON.stringify(now.countText)}, ${now.items} shown`);
      const want = expect[typed];
      check(Array.isArray(want), `HEMVIST_EXPECT has nothing for ${JSON.stringify(typed)}`);
      check(
        now.total === want.length,
        `"${typed}": the count says ${JSON.stringify(now.countText)}, expected ${want.length} (${want.join(', ')})`,
      );
      check(
        now.items === Math.min(want.length, PAGE_SIZE),
        `"${typed}": ${now.items} results shown, expected ${Math.min(want.length, PAGE_SIZE)}`,
      );
      if (want.length <= PAGE_SIZE) {
        check(same(now.names, want), `"${typed}": shown ${JSON.stringify(now.names)}, expected ${JSON.stringify(want)}`);
      }
      await sleep(PAUSE_MS);
    }

    // The list narrowed, and what is left matches what was typed, highlighted.
    for (let i = 1; i < seen.length; i++) {
      check(seen[i].total <= seen[i - 1].total, `the list grew from "${seen[i - 1].typed}" to "${seen[i].typed}": ${JSON.stringify(seen)}`);
    }
    check(
      seen[seen.length - 1].items < seen[0].items,
      `the list did not narrow: ${JSON.stringify(seen)}`,
    );
    const last = await results(page);
    const prefix = toType.toLowerCase();
    for (const name of last.names) {
      const words = name.toLowerCase().split(/[^\p{L}\p{N}]+/u);
      check(words.some((w) => w.startsWith(prefix)), `"${name}" is shown for "${toType}" but has no word starting with it`);
    }
    check(last.marks.length >= last.names.length, `too few highlighted matches: ${JSON.stringify(last.marks)}`);
    for (const m of last.marks) {
      check(m.toLowerCase().startsWith(prefix), `highlighted "${m}" does not start with "${toType}"`);
    }

    // The query is in the address bar (htmx pushed it): the page can be bookmarked and shared.
    check(last.search === toType, `the URL does not carry ?q=${toType}: ${page.url()}`);
    check(last.q === toType, `the input holds ${JSON.stringify(last.q)}`);

    const shot = path.join(artifacts, 'search.png');
    await page.screenshot({ path: shot, fullPage: true });
    step(`screenshot ${shot}`);

    // Back: the previous query's results, restored from the server.
    const previous = toType.slice(0, -1);
    step('back');
    await page.goBack({ timeout: KEY_TIMEOUT_MS });
    let back;
    try {
      await page.waitForFunction(
        (q) => new URL(location.href).searchParams.get('q') === q && document.querySelector('#q') !== null,
        previous,
        { timeout: KEY_TIMEOUT_MS },
      );
      back = await waitForResults(page, previous, null);
    } catch (e) {
      throw new Failure(`after going back: ${e.message} (at ${page.url()})`);
    }
    step(`after back at ${page.url()}: ${JSON.stringify(back.countText)}, ${back.items} shown, input ${JSON.stringify(back.q)}`);
    check(back.total === expect[previous].length, `after going back the count says ${JSON.stringify(back.countText)}`);
    check(back.q === previous, `after going back the input holds ${JSON.stringify(back.q)}, expected "${previous}"`);
    check(
      (await page.locator('#q').count()) === 1 && (await page.locator('header.top').count()) === 1,
      'after going back the page is not whole (a fragment in place of the page?)',
    );

    // A phone opening the bookmarked query: the whole page, nothing wider than the screen.
    const phone = await browser.newContext({
      storageState: await context.storageState(),
      viewport: PHONE,
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    });
    const small = await phone.newPage();
    watch(small, origin, problems);
    step(`phone: open ${base}/o/${org}/?q=${toType}`);
    await small.goto(`${base}/o/${org}/?q=${encodeURIComponent(toType)}`);
    await small.waitForSelector('#q');
    const onPhone = await results(small);
    check(
      onPhone.total === expect[toType].length && same(onPhone.names, expect[toType]),
      `phone: shown ${JSON.stringify(onPhone.names)} (${JSON.stringify(onPhone.countText)})`,
    );
    const width = await small.evaluate(() => document.documentElement.scrollWidth);
    check(width <= PHONE.width, `phone: the page is ${width}px wide on a ${PHONE.width}px screen`);
    const phoneShot = path.join(artifacts, 'search-phone.png');
    await small.screenshot({ path: phoneShot });
    step(`screenshot ${phoneShot}`);
    await phone.close();

    check(problems.length === 0, `the pages misbehaved:\n  ${problems.join('\n  ')}`);
    step(`ok: ${seen.map((s) => `${s.typed}=${s.total}`).join(' → ')}`);
  } catch (e) {
    if (page) {
      const shot = path.join(artifacts, 'search-failure.png');
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
      console.error(`screenshot of the failure: ${shot}`);
    }
    if (problems.length > 0) console.error(`also seen:\n  ${problems.join('\n  ')}`);
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
