// Room keys forwarded between one user's own devices, with the web client on either side.
// A: the browser (the user's primary device) holds a peer's Megolm session and its own;
// when a new device of the same user is linked (a Rust SDK device), the browser sees the
// device-list change and sends it every session it holds (ForwardedRoomKeys over Olm),
// so the new device reads the messages sent before it existed. B: a Rust SDK device holds
// a peer's session; a browser linked afterwards to the same user gets it forwarded and
// shows the message sent before it was linked. Run by tests/browser_web_keys.rs, which
// drives the SDK devices: the script prints a line at each step and waits for the test's
// file `<SWITCHBOARD_WORK_DIR>/<step>` (its JSON content) before the next.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { env, run, screenshot, step } from './lib.mjs';

const APP = env('SWITCHBOARD_APP_URL');
const WORK = env('SWITCHBOARD_WORK_DIR');
const A = JSON.parse(env('SWITCHBOARD_PROFILE_A'));
const WAIT = 30_000;

/** Waits for the test's file for this step; its JSON. */
async function waitFor(name) {
  const path = join(WORK, name);
  const deadline = Date.now() + 90_000;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`the test never wrote ${name}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return JSON.parse(readFileSync(path, 'utf8'));
}

/** Signs a page in as a device the test provisioned (what sign-up or linking leaves in IndexedDB). */
async function signIn(page, profile) {
  await page.goto(APP);
  await page.waitForSelector('[data-testid=signup]');
  await page.evaluate(
    (p) =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open('switchboard', 1);
        open.onsuccess = () => {
          const tx = open.result.transaction('kv', 'readwrite');
          tx.objectStore('kv').put(p, 'profile');
          tx.oncomplete = resolve;
          tx.onerror = () => reject(tx.error);
        };
        open.onerror = () => reject(open.error);
      }),
    profile,
  );
  await page.reload();
  await page.waitForSelector('[data-testid=link][data-state=online]', { timeout: WAIT });
  // Its keys are published (others can encrypt for it) once IndexedDB says so.
  await page.waitForFunction(
    () =>
      new Promise((resolve) => {
        const open = indexedDB.open('switchboard', 1);
        open.onsuccess = () => {
          const request = open.result.transaction('kv', 'readonly').objectStore('kv').get('e2ee:published');
          request.onsuccess = () => resolve(request.result === true);
          request.onerror = () => resolve(false);
        };
        open.onerror = () => resolve(false);
      }),
    null,
    { timeout: WAIT, polling: 100 },
  );
}

/** Waits until the list shows this conversation with this last text. */
async function listed(page, conversation, text) {
  await page.waitForFunction(
    ([id, t]) => document.querySelector(`[data-conversation="${id}"] .last`)?.textContent === t,
    [conversation, text],
    { timeout: WAIT },
  );
}

await run('web-keys', async ({ browser, page, problems }) => {
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));

  // A: the browser is the primary device; a peer writes, the browser answers.
  await signIn(page, A);
  console.log('a-online');
  const { conversation, text } = await waitFor('a-peer-sent');
  await listed(page, conversation, text);
  await page.click(`[data-conversation="${conversation}"]`);
  await page.waitForSelector('[data-testid=chat]:not([hidden])');
  const mine = 'from the browser, before the link';
  await page.fill('#composer', mine);
  await page.click('#send');
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('[data-testid=messages] .message.mine')].some((e) => e.querySelector('.text')?.textContent === t && e.dataset.status !== 'pending'),
    mine,
    { timeout: WAIT },
  );
  step('the browser read the peer and answered');
  console.log('a-sent');
  // The test links a new SDK device of this user; the browser forwards its sessions to it.
  await waitFor('a-done');
  const forwarded = logs.find((l) => l.startsWith('forwarded '));
  if (!forwarded) throw new Error(`the browser never said it forwarded keys; its console:\n${logs.join('\n')}`);
  step(`the browser: ${forwarded}`);

  // B: a browser linked to a user whose SDK device holds a peer's session.
  const b = await waitFor('b-linked');
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const linked = await context.newPage();
  linked.on('pageerror', (error) => problems.push(`linked page error: ${error.message}`));
  await signIn(linked, b.profile);
  await listed(linked, b.conversation, b.text);
  await screenshot(linked, 'web', 'keys-forwarded-to-browser');
  step('the linked browser decrypted a message sent before it was linked, with the key its SDK sibling forwarded');
  console.log('b-done');
  await context.close();
});
console.log('web keys test passed');
