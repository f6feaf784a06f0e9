// The residency report's HTML page in a real browser, driven by tests/residency_report.rs:
// headless Chromium (Debian's) opens the file the CLI wrote and checks that it renders (the
// verification, the summary, the org's section with its intervals), that it makes no request
// beyond the file itself, and that it prints (a PDF is made).
//
// Input (environment): HEMVIST_REPORT (the HTML file), HEMVIST_ORG, HEMVIST_ARTIFACTS,
// CHROMIUM. playwright-core is found through NODE_PATH. Exits non-zero on failure.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { pathToFileURL } = require('node:url');

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

async function main() {
  const file = env('HEMVIST_REPORT');
  const org = env('HEMVIST_ORG');
  const artifacts = env('HEMVIST_ARTIFACTS');
  fs.mkdirSync(artifacts, { recursive: true });
  const url = pathToFileURL(file).href;
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: LAUNCH_ARGS, timeout: 30000 });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    const requests = [];
    const problems = [];
    page.on('request', (r) => requests.push(r.url()));
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    await page.goto(url, { waitUntil: 'load' });
    check(await page.title() === 'Residency report', `title: ${await page.title()}`);
    const verification = await page.textContent('#verification');
    check(verification.startsWith('Intact'), `verification: ${verification}`);
    const summary = await page.textContent('#summary');
    check(/1 compliant/.test(summary), `summary: ${summary}`);
    const section = page.locator(`#org-${org}`);
    check(await section.count() === 1, `no section for ${org}`);
    const verdict = await section.locator('.verdict').textContent();
    check(verdict === 'compliant', `verdict: ${verdict}`);
    const rows = await section.locator('table').first().locator('tbody tr').count();
    check(rows >= 4, `only ${rows} intervals shown`);
    const kinds = await section.locator('table').first().locator('tbody tr td:first-child').allTextContents();
    for (const k of ['primary', 'backups', 'branch']) check(kinds.includes(k), `no ${k} interval: ${kinds}`);
    const box = await section.boundingBox();
    check(box && box.width > 300 && box.height > 100, `the org's section is not laid out: ${JSON.stringify(box)}`);
    const external = requests.filter((r) => r !== url);
    check(external.length === 0, `the page made requests beyond itself: ${external.join(', ')}`);
    check(problems.length === 0, problems.join('\n'));
    await page.screenshot({ path: path.join(artifacts, 'residency-report.png'), fullPage: true });
    const pdf = await page.pdf({ path: path.join(artifacts, 'residency-report.pdf'), format: 'A4' });
    check(pdf.length > 1000, 'printing made no PDF');
    console.log(`ok: ${rows} intervals, ${requests.length} request (the file), PDF ${pdf.length} bytes`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e instanceof Failure ? `FAILED: ${e.message}` : e);
  process.exit(1);
});
