// How fast the web client shows a long conversation list: an account with COUNT 1:1
// conversations (each with one encrypted message from another user) opens the app.
// Measured from the start of navigation (performance.now() in the page) to the list
// showing every conversation with its decrypted last message: first on a browser whose
// device was away while the messages came (catch-up: every room key and message arrives
// and is decrypted), then after a reload (everything from IndexedDB). Run by
// tests/browser_web_load.rs, which provisions the accounts, sends the messages once this
// script prints "ready", and then creates the file SWITCHBOARD_GO_FILE.
//
// Also reports where the catch-up load's time went, counted in the page: WebSocket frames
// received and sent by kind (the protobuf field number of the frame's `kind`), with the
// times the first and last of each kind came, and IndexedDB transactions opened. With
// SWITCHBOARD_CPU_PROFILE=<file.cpuprofile> it records a CPU profile of the catch-up load
// (CDP `Profiler`), saves it there and prints the functions with the most self time.
// SWITCHBOARD_WEB_DIST=<dir> serves the app's files from that built `web/dist` instead of
// the server's (to measure an older build against the same server); SWITCHBOARD_LOAD_LABEL
// prefixes the report lines.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { env, fail, launch, screenshot, step } from './lib.mjs';

const APP = env('SWITCHBOARD_APP_URL');
const PROFILE = JSON.parse(env('SWITCHBOARD_PROFILE_JSON'));
const GO = env('SWITCHBOARD_GO_FILE');
const COUNT = Number(env('SWITCHBOARD_CONVERSATIONS'));
const DIST = process.env.SWITCHBOARD_WEB_DIST;
const CPU_PROFILE = process.env.SWITCHBOARD_CPU_PROFILE;
const LABEL = process.env.SWITCHBOARD_LOAD_LABEL ? `${process.env.SWITCHBOARD_LOAD_LABEL}: ` : '';
const WAIT = 120_000;

const SERVER_KINDS = { 1: 'welcome', 5: 'message', 9: 'presence', 10: 'catchUpComplete', 11: 'error', 18: 'deviceList', 20: 'keysLow', 22: 'toDevice', 23: 'deviceListsChanged', 27: 'inbox' };
const CLIENT_KINDS = { 1: 'hello', 5: 'ack', 9: 'presenceQuery', 18: 'uploadKeys', 19: 'queryDevices', 20: 'claimKeys', 22: 'ackToDevice', 23: 'ackDeviceLists', 25: 'inbox' };

/** Runs in the page before the app: counts frames by kind and IndexedDB transactions (window.__load). */
function instrument() {
  const load = { received: {}, sent: {}, idb: { readonly: 0, readwrite: 0 } };
  window.__load = load;
  const kindOf = (data) => {
    const bytes = new Uint8Array(data instanceof ArrayBuffer ? data : data.buffer ?? new ArrayBuffer(0));
    let tag = 0;
    for (let i = 0, shift = 0; i < bytes.length && i < 5; i++, shift += 7) {
      tag |= (bytes[i] & 0x7f) << shift;
      if (!(bytes[i] & 0x80)) break;
    }
    return tag >> 3;
  };
  const count = (table, kind) => {
    const now = Math.round(performance.now());
    const e = (table[kind] ??= { n: 0, first: now, last: now });
    e.n++;
    e.last = now;
  };
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    count(load.sent, kindOf(data));
    if (!this.__counted) {
      this.__counted = true;
      this.addEventListener('message', (event) => count(load.received, kindOf(event.data)));
    }
    return send.call(this, data);
  };
  const transaction = IDBDatabase.prototype.transaction;
  IDBDatabase.prototype.transaction = function (stores, mode, options) {
    load.idb[mode === 'readwrite' ? 'readwrite' : 'readonly']++;
    return transaction.call(this, stores, mode, options);
  };
}

/** The page's counters, one line each. */
async function report(page, phase) {
  const load = await page.evaluate(() => window.__load);
  const table = (t, names) =>
    Object.entries(t)
      .map(([k, e]) => `${names[k] ?? `#${k}`}=${e.n} (${e.first}–${e.last} ms)`)
      .join(', ');
  console.log(`${LABEL}${phase} frames received: ${table(load.received, SERVER_KINDS)}`);
  console.log(`${LABEL}${phase} frames sent: ${table(load.sent, CLIENT_KINDS)}`);
  console.log(`${LABEL}${phase} IndexedDB transactions: ${load.idb.readwrite} readwrite, ${load.idb.readonly} readonly`);
}

/** The functions with the most self time in a CDP CPU profile. */
function topFunctions(profile, n) {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const self = new Map();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    total += dt;
    const f = byId.get(id).callFrame;
    const name = `${f.functionName || '(anonymous)'} ${f.url ? `${basename(f.url)}:${f.lineNumber + 1}` : ''}`.trim();
    self.set(name, (self.get(name) ?? 0) + dt);
  });
  return { total: total / 1000, top: [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map(([name, us]) => [name, us / 1000]) };
}

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

// A page whose files the test serves (SWITCHBOARD_WEB_DIST) counts as from outside the
// loopback network for Chromium's local-network checks, which would block its WebSocket.
const { browser, context, page, problems } = await launch(DIST ? ['--disable-features=LocalNetworkAccessChecks'] : []);
try {
  await context.addInitScript(instrument);
  if (DIST) {
    // The app's files from another build, with the server's headers (CSP and all).
    await context.route(/\/app\/.*$/, async (route) => {
      const url = new URL(route.request().url());
      const path = url.pathname.replace(/^\/app\//, '') || 'index.html';
      const file = join(DIST, path);
      if (!existsSync(file)) return route.fulfill({ status: 404, body: 'not found' });
      const response = await route.fetch({ url: new URL('/app/', url).href });
      const type = path.endsWith('.js') ? 'text/javascript; charset=utf-8' : path.endsWith('.wasm') ? 'application/wasm' : path.endsWith('.css') ? 'text/css; charset=utf-8' : 'text/html; charset=utf-8';
      const headers = { ...response.headers(), 'content-type': type };
      delete headers['content-length'];
      delete headers['content-encoding'];
      await route.fulfill({ status: 200, body: readFileSync(file), headers });
    });
    step(`the app's files come from ${DIST}`);
  }
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
  let cdp = null;
  if (CPU_PROFILE) {
    // A page of the same origin first, so the profiled renderer is the app's.
    await cold.goto(new URL('/healthz', APP).href);
    cdp = await context.newCDPSession(cold);
    await cdp.send('Profiler.enable');
    await cdp.send('Profiler.setSamplingInterval', { interval: 500 });
    await cdp.send('Profiler.start');
  }
  await cold.goto(APP);
  const coldMs = await listReady(cold);
  console.log(`${LABEL}catch-up load: ${coldMs} ms`);
  await report(cold, 'catch-up load');
  if (cdp) {
    const { profile } = await cdp.send('Profiler.stop');
    writeFileSync(CPU_PROFILE, JSON.stringify(profile));
    const { total, top } = topFunctions(profile, 25);
    console.log(`${LABEL}CPU profile of the catch-up load (${CPU_PROFILE}): ${Math.round(total)} ms sampled; most self time:`);
    for (const [name, ms] of top) console.log(`  ${ms.toFixed(0).padStart(7)} ms  ${name}`);
  }
  await screenshot(cold, 'web', 'load-200-conversations');
  await cold.reload();
  const warmMs = await listReady(cold);
  console.log(`${LABEL}warm load: ${warmMs} ms`);
  await report(cold, 'warm load');
  if (problems.length) fail(problems.join('\n'));
  step(`${COUNT} conversations listed with their decrypted last messages`);
} catch (error) {
  fail(error.stack || error.message);
} finally {
  await browser.close();
}
console.log('web load test passed');
