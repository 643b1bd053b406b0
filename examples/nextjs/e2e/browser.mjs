// Drives Debian's Chromium (playwright-core, headless) for examples/nextjs_test.go:
// opens the page, says "opened", waits for the text given on stdin to appear
// in #todos WITHOUT a reload (a marker set on window survives) and the hook's
// counter, over one shared /events connection, says "updated".
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const [url, before] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.error(`console.${m.type()}: ${m.text()}`));
  const streams = []; // requests to tagstream's /events: one per page, shared by both components
  page.on('request', (r) => { if (new URL(r.url()).pathname === '/events' && r.method() === 'GET') streams.push(r.url()); });
  let loads = 0; // full document loads; router.refresh() is none
  page.on('load', () => loads++);
  await page.goto(url);
  await page.locator('#todos', { hasText: before }).waitFor({ timeout: 60_000 });
  await page.evaluate(() => { window.__marker = 'kept'; });
  // Wait until the live client is connected (status 'live' means ready was received).
  await page.waitForFunction(() => {
    try {
      return Object.keys(sessionStorage).some((k) => k.startsWith('tagstream:last-event-id:'));
    } catch { return false; }
  }, null, { timeout: 60_000 });
  console.log('opened');
  const rl = readline.createInterface({ input: process.stdin });
  const want = await new Promise((ok) => rl.once('line', ok));
  rl.close();
  await page.locator('#todos', { hasText: want }).waitFor({ timeout: 60_000 });
  await page.locator('#seen', { hasText: 'changes seen: 1' }).waitFor({ timeout: 60_000 });
  const marker = await page.evaluate(() => window.__marker);
  if (streams.length !== 1) throw new Error(`want one /events connection for the page, got ${streams.length}: ${streams.join(' ')}`);
  if (!streams[0].includes('tags=todo%3A*%2Ctodos')) throw new Error(`the shared connection watches ${streams[0]}`);
  if (marker !== 'kept' || loads !== 1) throw new Error(`the page was reloaded (marker ${marker}, ${loads} loads)`);
  console.log('updated');
} finally {
  await browser.close();
}
