// How fast the web client shows a long conversation list: an account with COUNT 1:1
// conversations (each with one encrypted message from another user) opens the app.
// Measured from the start of navigation (performance.now() in the page) to the list
// showing every conversation with its decrypted last message: first on a browser whose
// device was away while the messages came (catch-up: every room key and message arrives
// and is decrypted), then after a reload (everything from IndexedDB). Run by
// tests/browser_web_load.rs, which provisions the accounts, sends the messages once this
// script prints "ready", and then creates the file SWITCHBOARD_GO_FILE.
import { existsSync } from 'node:fs';
import { env, fail, launch, screenshot, step } from './lib.mjs';

const APP = env('SWITCHBOARD_APP_URL');
const PROFILE = JSON.parse(env('SWITCHBOARD_PROFILE_JSON'));
const GO = env('SWITCHBOARD_GO_FILE');
const COUNT = Number(env('SWITCHBOARD_CONVERSATIONS'));
const WAIT = 90_000;

/** Waits until the list shows COUNT conversations whose last message was decrypted; ms since navigation start. */
async function listReady(page) {
  try {
    await page.waitForFunction(
      (n) => [...document.querySelectorAll('[data-testid=conversations] .conversation .last')].filter((e) => e.textContent.startsWith('hello from sender')).length === n,
      COUNT,
      { timeout: WAIT, polling: 10 },
    );
  } catch (error) {
    const rows = await page.$$eval('[data-testid=conversations] .conversation .last', (els) => els.map((e) => e.textContent));
    const counts = {};
    for (const r of rows) counts[r.replace(/[0-9]+$/, 'N')] = (counts[r.replace(/[0-9]+$/, 'N')] ?? 0) + 1;
    throw new Error(`${error.message}; the list shows ${rows.length} conversations: ${JSON.stringify(counts)}`);
  }
  return page.evaluate(() => Math.round(performance.now()));
}

const { browser, context, page, problems } = await launch();
try {
  // The device's credentials go into IndexedDB as sign-up would leave them.
  await page.goto(APP);
  await page.waitForSelector('[data-testid=signup]');
  await page.evaluate(
    (profile) =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open('switchboard', 1);
        open.onsuccess = () => {
          const tx = open.result.transaction('kv', 'readwrite');
          tx.objectStore('kv').put(profile, 'profile');
          tx.oncomplete = resolve;
          tx.onerror = () => reject(tx.error);
        };
        open.onerror = () => reject(open.error);
      }),
    PROFILE,
  );
  await page.reload();
  await page.waitForSelector('[data-testid=link][data-state=online]', { timeout: WAIT });
  await page.waitForFunction(() => document.querySelector('[data-testid=link]')?.textContent === 'online', null, { timeout: WAIT });
  // Keys published: away while the others write.
  await page.close();
  console.log('ready');
  const deadline = Date.now() + WAIT;
  while (!existsSync(GO)) {
    if (Date.now() > deadline) fail('the messages were never sent');
    await new Promise((r) => setTimeout(r, 100));
  }

  const cold = await context.newPage();
  cold.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  cold.on('console', (m) => m.type() === 'warning' && console.log(`page warning: ${m.text()}`));
  await cold.goto(APP);
  const coldMs = await listReady(cold);
  console.log(`catch-up load: ${coldMs} ms`);
  await screenshot(cold, 'web', 'load-200-conversations');
  await cold.reload();
  const warmMs = await listReady(cold);
  console.log(`warm load: ${warmMs} ms`);
  if (problems.length) fail(problems.join('\n'));
  step(`${COUNT} conversations listed with their decrypted last messages`);
} catch (error) {
  fail(error.stack || error.message);
} finally {
  await browser.close();
}
console.log('web load test passed');
