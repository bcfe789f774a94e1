// The web client end to end: two browser contexts (Alice, Bob) sign up in the app served
// at /app/, chat 1:1 encrypted (✓ sent while Bob is offline, ✓✓ when he comes back, blue
// ✓✓ when he reads, typing both ways), a Rust CLI client (Carol, `switchboard client`)
// and a browser exchange encrypted messages both ways (the CLI shows the browser typing;
// it has no command to send typing), images show as thumbnails in the chat, a file that is
// no image shows by name and the CLI downloads the same bytes; a group of the three (✓
// until every member's device has a message, then ✓✓, then blue ✓✓; the CLI sends in it
// too, `client send --group`), the peer's "online" and "last seen …" in the chat header,
// and Bob's browser goes offline and back and catches up without gaps or duplicates; a
// browser's reconnection attempts while its sockets are refused come with a doubling
// delay. Then names
// (profiles, live), and a new browser device of Carol: its list comes from the server (a
// 1:1 nobody wrote in, unread counts, the group subject, order, a pin made elsewhere), and
// scrolling up loads the older messages its first catch-up left out, with their ticks.
// Chat actions: mute and archive made elsewhere arrive live; delete for everyone, edits and
// reactions reach the other browser; pin (a fourth refused), archive, mute (8 hours, a
// week, always; silent or no push; the 🔇 goes when the mute ends) and clear from the chat
// header. Browser notifications while the tab is hidden (a message, a reaction; a click
// opens the chat), none for a muted chat or the open chat while visible. Group
// management: adding and removing members, invite links (create, join by pasting, revoke),
// promote and demote (admin badges), renaming (live for every member), leaving (the chat
// becomes read-only), and the server's refusals (NOT_ADMIN, INVALID_ARGUMENT,
// INVALID_INVITE) shown in the UI.
// Run by tests/browser_web.rs, which sets the environment and then checks that the
// server's stored bytes hold no plaintext canary sent from the browser.
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { env, run, screenshot, step } from './lib.mjs';

const APP = env('SWITCHBOARD_APP_URL');
const SERVER = env('SWITCHBOARD_SERVER');
const BIN = env('SWITCHBOARD_BIN');
const WORK = env('SWITCHBOARD_WORK_DIR');
const CANARY = env('SWITCHBOARD_CANARY');
const WAIT = 20_000;

/** Runs the CLI to the end; its stdout. */
function cli(...args) {
  return execFileSync(BIN, ['client', ...args], { encoding: 'utf8', timeout: 60_000 });
}

/**
 * Starts `client watch` (`extra`: more arguments, e.g. `--no-read`); resolves when a line
 * matching `pattern` appears, then stops it. `onConnected` runs once the CLI is connected.
 */
function watchFor(profile, pattern, what, { extra = [], onConnected } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['client', 'watch', ...extra, '--profile', profile], { stdio: ['ignore', 'pipe', 'pipe'] });
    let connected = false;
    let out = '';
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`the CLI never showed ${what}; it printed:\n${out}`));
    }, WAIT);
    const check = (chunk) => {
      out += chunk;
      if (!connected && out.includes('connected as user')) {
        connected = true;
        onConnected?.();
      }
      if (pattern.test(out)) {
        clearTimeout(timer);
        // Give the read receipt a moment to leave before stopping.
        setTimeout(() => {
          child.kill();
          resolve(out);
        }, 500);
      }
    };
    child.stdout.on('data', check);
    child.stderr.on('data', (c) => (out += c));
  });
}

let phoneCounter = 0;
function phone() {
  phoneCounter += 1;
  return `+1415555${String(Date.now() % 1000).padStart(3, '0')}${phoneCounter}`;
}

/** Signs up in the app; returns the user id. */
async function signUp(page, name) {
  await page.goto(APP);
  await page.waitForSelector('[data-testid=signup]');
  if (name === 'alice') await screenshot(page, 'web', '1-signup');
  await page.fill('#phone', phone());
  await page.click('#send-code');
  await page.waitForFunction(() => document.querySelector('#code')?.value.length >= 4, null, { timeout: WAIT });
  await page.click('#verify');
  await page.waitForSelector('[data-testid=link][data-state=online]', { timeout: WAIT });
  const id = await page.getAttribute('[data-testid=me]', 'data-user-id');
  step(`${name} signed up in the browser as ${id}`);
  return id;
}

async function send(page, text) {
  await page.fill('#composer', text);
  await page.click('#send');
}

/** Waits until the open chat shows a message with this text. */
async function seen(page, text) {
  await page.waitForFunction((t) => [...document.querySelectorAll('[data-testid=messages] .text')].some((e) => e.textContent === t), text, { timeout: WAIT });
}

/** Waits until my message with this text has this tick state. */
async function tick(page, text, status) {
  await page.waitForFunction(
    ([t, s]) => [...document.querySelectorAll('[data-testid=messages] .message.mine')].some((e) => e.querySelector('.text')?.textContent === t && e.dataset.status === s),
    [text, status],
    { timeout: WAIT },
  );
}

// Records every Notification the app constructs (title, body, tag, and the object itself,
// for a simulated click) in window.__notifications, still calling the real constructor;
// window.__setHidden(true | false) makes the page hidden or visible as far as the app can
// tell (document.visibilityState, document.hidden, a 'visibilitychange' event).
const NOTIFICATION_SPY = () => {
  const Real = window.Notification;
  window.__notifications = [];
  if (Real) {
    const Spy = function Notification(title, options = {}) {
      let n;
      try {
        n = new Real(title, options);
      } catch (_) {
        n = new EventTarget();
        n.close = () => {};
      }
      window.__notifications.push({ title, body: options.body ?? '', tag: options.tag ?? '', n });
      return n;
    };
    Object.defineProperty(Spy, 'permission', { get: () => Real.permission });
    Spy.requestPermission = (...args) => Real.requestPermission(...args);
    Spy.prototype = Real.prototype;
    window.Notification = Spy;
  }
  window.__setHidden = (hidden) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
    document.dispatchEvent(new Event('visibilitychange'));
  };
};

/** The notifications a page has shown so far (title, body, tag). */
function notifications(page) {
  return page.evaluate(() => window.__notifications.map(({ title, body, tag }) => ({ title, body, tag })));
}

/** A browser user's credentials, from the app's IndexedDB. */
function credentials(page) {
  return page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const r = indexedDB.open('switchboard', 1);
        r.onerror = () => reject(r.error);
        r.onsuccess = () => {
          const get = r.result.transaction('kv').objectStore('kv').get('profile');
          get.onsuccess = () => (r.result.close(), resolve(get.result));
          get.onerror = () => reject(get.error);
        };
      }),
  );
}

async function openConversation(page, id) {
  await page.click(`[data-conversation="${id}"]`);
  await page.waitForSelector('[data-testid=chat]:not([hidden])');
}

await run('web', async ({ browser, context: aliceContext, page: alice, problems }) => {
  // Alice allows notifications; her app's are recorded.
  await aliceContext.grantPermissions(['notifications']);
  await aliceContext.addInitScript(NOTIFICATION_SPY);

  // Carol: the Rust CLI client.
  const carolProfile = join(WORK, 'carol.json');
  const carolPhone = phone();
  const code = cli('register', '--server', SERVER, '--phone', carolPhone).match(/(\d{6})/)?.[1];
  if (!code) throw new Error('no dev code from the CLI');
  cli('verify', '--server', SERVER, '--phone', carolPhone, '--code', code, '--profile', carolProfile);
  const carol = cli('whoami', '--profile', carolProfile).match(/user ([0-9a-f-]{36})/)[1];
  step(`carol registered with the CLI as ${carol}`);

  const bobContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const bob = await bobContext.newPage();
  bob.on('pageerror', (error) => problems.push(`bob page error: ${error.message}`));

  const aliceId = await signUp(alice, 'alice');
  const bobId = await signUp(bob, 'bob');
  // Permission is asked from a button, never on load: shown while the browser would ask.
  if (!(await alice.isHidden('[data-testid=notifications-banner]'))) throw new Error('the notifications banner shows although they are allowed');
  const bobPermission = await bob.evaluate(() => Notification.permission);
  if ((await bob.isVisible('[data-testid=enable-notifications]')) !== (bobPermission === 'default')) throw new Error(`the notifications banner does not follow the permission (${bobPermission})`);
  step(`the "Enable notifications" banner shows only while the browser would ask (bob: ${bobPermission}, alice: granted)`);

  // 1:1 while Bob is offline: ✓ only.
  await bobContext.setOffline(true);
  await bob.waitForSelector('[data-testid=link][data-state=offline]', { timeout: WAIT });
  await alice.fill('#new-chat-user', bobId);
  await alice.click('#start-chat');
  await alice.waitForSelector('[data-testid=chat]:not([hidden])');
  const first = `hello bob ${CANARY}`;
  await send(alice, first);
  await tick(alice, first, 'sent');
  step('✓ sent while the recipient is offline');
  await screenshot(alice, 'web', '2-sent-tick');

  // Bob comes back: ✓✓ delivered, an unread count in his list.
  await bobContext.setOffline(false);
  await bob.waitForSelector('[data-testid=link][data-state=online]', { timeout: WAIT });
  await tick(alice, first, 'delivered');
  step('✓✓ delivered after the recipient reconnected');
  const conversation = await alice.getAttribute('.conversation.open', 'data-conversation');
  // Clicking "Chat" opens the new conversation once the server answers: wait for it, or
  // what is typed next goes to the chat still open.
  const opened = (page, before) => page.waitForFunction((b) => (document.querySelector('.conversation.open')?.dataset.conversation ?? b) !== b, before, { timeout: WAIT });
  await bob.waitForSelector(`[data-conversation="${conversation}"] [data-testid=unread]`, { timeout: WAIT });
  await screenshot(bob, 'web', '3-conversation-list-unread');
  step('the conversation list shows the unread count');

  // Bob reads: blue ✓✓; the text decrypted in his browser.
  await openConversation(bob, conversation);
  await seen(bob, first);
  await tick(alice, first, 'read');
  step('blue ✓✓ once read; decrypted in the other browser');

  // Typing, both ways.
  await bob.fill('#composer', 'typ');
  await bob.type('#composer', 'ing');
  await alice.waitForFunction(() => document.querySelector('[data-testid=subtitle]')?.textContent === 'typing…', null, { timeout: WAIT });
  step('alice sees bob typing');
  await screenshot(alice, 'web', '4-typing');
  await send(bob, 'hi alice');
  await seen(alice, 'hi alice');
  await alice.type('#composer', 'x');
  await bob.waitForFunction(() => document.querySelector('[data-testid=subtitle]')?.textContent === 'typing…', null, { timeout: WAIT });
  await alice.fill('#composer', '');
  step('bob sees alice typing; his reply decrypted');

  // Browser ⇄ CLI, encrypted both ways.
  await alice.fill('#new-chat-user', carol);
  await alice.click('#start-chat');
  await opened(alice, conversation);
  const toCarol = `hello carol ${CANARY}`;
  await send(alice, toCarol);
  await tick(alice, toCarol, 'sent');
  const watched = await watchFor(carolProfile, new RegExp(`from ${aliceId}[^:\n]*: ${toCarol}`), 'the browser\'s message');
  step(`the CLI decrypted the browser's message: ${watched.trim().split('\n').find((l) => l.includes('hello carol'))}`);
  await tick(alice, toCarol, 'read');
  step('the CLI read it: blue ✓✓ in the browser');
  // Typing from the browser shows in the CLI's watch (the CLI has no command to send typing).
  let typingTimer = null;
  await watchFor(carolProfile, new RegExp(`user ${aliceId} is typing…`), 'the browser typing', {
    onConnected: () => {
      // A keystroke every 0.5 s (the app sends at most one Typing per 3 s).
      typingTimer = setInterval(() => alice.type('#composer', 'z').catch(() => {}), 500);
    },
  }).finally(() => clearInterval(typingTimer));
  await alice.fill('#composer', '');
  step('the CLI showed the browser typing');
  cli('send', '--profile', carolProfile, '--to', aliceId, 'hello from the CLI');
  await seen(alice, 'hello from the CLI');
  step('the browser decrypted the CLI\'s message');
  await screenshot(alice, 'web', '5-chat-with-cli');

  // An image from the browser opens on the CLI side, byte for byte.
  const png = Buffer.from(
    await alice.evaluate(async () => {
      const canvas = new OffscreenCanvas(160, 100);
      const g = canvas.getContext('2d');
      g.fillStyle = '#25d366';
      g.fillRect(0, 0, 160, 100);
      g.fillStyle = '#075e54';
      g.fillRect(40, 20, 80, 60);
      const bytes = new Uint8Array(await (await canvas.convertToBlob({ type: 'image/png' })).arrayBuffer());
      return Array.from(bytes);
    }),
  );
  await alice.setInputFiles('#attach', { name: 'browser-photo.png', mimeType: 'image/png', buffer: png });
  await tick(alice, 'browser-photo.png', 'sent');
  const outDir = join(WORK, 'downloads');
  mkdirSync(outDir, { recursive: true });
  const downloaded = cli('download', '--profile', carolProfile, '--with', aliceId, '--out', outDir);
  const got = readFileSync(join(outDir, 'browser-photo.png'));
  if (!got.equals(png)) throw new Error(`the CLI's download differs from the browser's image (${got.length} vs ${png.length} bytes): ${downloaded}`);
  step(`the CLI downloaded and decrypted the browser's image: ${downloaded.trim()}`);
  // The chat shows the image's thumbnail (a small JPEG carried in the message), not the
  // full image, before any viewer is opened: loaded, 160x100 scaled down, same shape.
  const thumbOf = (page, name) =>
    page.waitForFunction(
      (n) => {
        const img = document.querySelector(`[data-testid=messages] [data-testid=open-media][data-name="${n}"] img`);
        return img && img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:') ? [img.naturalWidth, img.naturalHeight] : null;
      },
      name,
      { timeout: WAIT },
    ).then((h) => h.jsonValue());
  const checkThumb = ([w, h], who) => {
    if (!(w < 160 && w >= 16 && Math.abs(w / h - 1.6) < 0.15)) throw new Error(`the thumbnail of ${who} image is ${w}x${h} (expected a 160x100 image scaled down)`);
  };
  if (await alice.$('[data-testid=viewer-image]')) throw new Error('a viewer is open before any click');
  const ownThumb = await thumbOf(alice, 'browser-photo.png');
  checkThumb(ownThumb, "the browser's own");
  step(`the browser's image shows as a ${ownThumb.join('x')} thumbnail in the chat`);

  // And an image from the CLI opens in the browser.
  const cliImage = join(WORK, 'cli-photo.png');
  writeFileSync(cliImage, png);
  cli('send-file', '--profile', carolProfile, '--to', aliceId, cliImage);
  await seen(alice, 'cli-photo.png');
  const cliThumb = await thumbOf(alice, 'cli-photo.png');
  checkThumb(cliThumb, "the CLI's");
  step(`the CLI's image shows as a ${cliThumb.join('x')} thumbnail in the chat, before the viewer opens`);
  await alice.click('[data-testid=open-media][data-name="cli-photo.png"]');
  await alice.waitForFunction(() => {
    const img = document.querySelector('[data-testid=viewer-image]');
    return img && img.complete && img.naturalWidth === 160;
  }, null, { timeout: WAIT });
  step('the browser downloaded, checked and decrypted the CLI\'s image (160 px wide)');
  await screenshot(alice, 'web', '5b-image-from-cli');
  await alice.click('[data-testid=viewer]');

  // A file that is no image, from the browser: shown with its name (and no thumbnail); the
  // CLI downloads the same bytes.
  const notes = Buffer.concat([Buffer.from(`notes ${CANARY.slice(-8)}\n`), Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7) % 256))]);
  await alice.setInputFiles('#attach', { name: 'notes.bin', mimeType: 'application/octet-stream', buffer: notes });
  await tick(alice, 'notes.bin', 'sent');
  const fileBubble = '[data-testid=messages] [data-testid=open-media][data-name="notes.bin"]';
  if (await alice.$(`${fileBubble} img`)) throw new Error('a file that is no image shows a thumbnail');
  if ((await alice.textContent(`${fileBubble} .badge`)) !== 'file') throw new Error('a file that is no image shows without its "file" badge');
  const notesSeq = await alice.$$eval('[data-testid=messages] .message.mine', (els) => els.find((e) => e.querySelector('.text')?.textContent === 'notes.bin')?.dataset.seq);
  const fileOut = cli('download', '--profile', carolProfile, '--with', aliceId, '--seq', notesSeq, '--out', outDir);
  const gotNotes = readFileSync(join(outDir, 'notes.bin'));
  if (!gotNotes.equals(notes)) throw new Error(`the CLI's download of notes.bin differs (${gotNotes.length} vs ${notes.length} bytes): ${fileOut}`);
  step(`a file that is no image shows by name with a "file" badge; the CLI downloaded the same ${notes.length} bytes: ${fileOut.trim()}`);

  // A group of the three.
  await alice.fill('#new-group-subject', 'Team');
  await alice.fill('#new-group-members', `${bobId}, ${carol}`);
  await alice.click('#create-group');
  await alice.waitForFunction(() => document.querySelector('[data-testid=chat-title]')?.textContent === 'Team', null, { timeout: WAIT });
  const group = await alice.getAttribute('.conversation.open', 'data-conversation');
  // ✓ while one member (the CLI, not connected) has not received it although the other
  // (Bob's browser) has; ✓✓ once every member's device has it (the CLI acknowledges
  // without reading).
  const firstInGroup = 'group roll call';
  await send(alice, firstInGroup);
  await tick(alice, firstInGroup, 'sent');
  await bob.waitForFunction((g) => document.querySelector(`[data-conversation="${g}"] .last`)?.textContent.includes('group roll call'), group, { timeout: WAIT });
  await alice.waitForTimeout(500);
  const early = await alice.$$eval('[data-testid=messages] .message.mine', (els, t) => els.find((e) => e.querySelector('.text')?.textContent === t)?.dataset.status, firstInGroup);
  if (early !== 'sent') throw new Error(`a group message received by one member of two shows "${early}", expected "sent"`);
  await watchFor(carolProfile, new RegExp(`from ${aliceId}[^:\n]*: ${firstInGroup}`), 'the first group message', { extra: ['--no-read'] });
  await tick(alice, firstInGroup, 'delivered');
  step('group: ✓ while one member\'s device has not received it, ✓✓ delivered once every member\'s has (none read yet)');
  const toGroup = `group hello ${CANARY}`;
  await send(alice, toGroup);
  await tick(alice, toGroup, 'sent');
  await bob.waitForSelector(`[data-conversation="${group}"]`, { timeout: WAIT });
  await openConversation(bob, group);
  await seen(bob, toGroup);
  await watchFor(carolProfile, new RegExp(`from ${aliceId}[^:\n]*: ${toGroup}`), 'the group message');
  await tick(alice, toGroup, 'read');
  step('group: both members decrypted it (browser and CLI); blue ✓✓ once all read');
  await send(bob, 'group reply from bob');
  await seen(alice, 'group reply from bob');
  const fromCli = `group hello from the CLI ${Date.now()}`;
  const sentByCli = cli('send', '--profile', carolProfile, '--group', group, fromCli);
  await seen(alice, fromCli);
  await seen(bob, fromCli);
  step(`group: the CLI's message (${sentByCli.trim()}) decrypted in both browsers`);
  await screenshot(alice, 'web', '6-group-chat');

  // Offline and back: everything once, in order. Alice's chat header shows Bob online
  // while his browser is connected, "last seen" (today) once it is not (privacy defaults:
  // everyone sees both).
  const subtitle = (page) => page.textContent('[data-testid=subtitle]');
  await openConversation(bob, conversation);
  await openConversation(alice, conversation);
  await alice.waitForFunction(() => document.querySelector('[data-testid=subtitle]')?.textContent === 'online', null, { timeout: WAIT });
  await bobContext.setOffline(true);
  await bob.waitForSelector('[data-testid=link][data-state=offline]', { timeout: WAIT });
  await alice.waitForFunction(() => document.querySelector('[data-testid=subtitle]')?.textContent.startsWith('last seen '), null, { timeout: WAIT });
  const lastSeen = await subtitle(alice);
  const today = await alice.evaluate(() => new Date().toLocaleDateString());
  if (!lastSeen.includes(today)) throw new Error(`"${lastSeen}" is not today (${today})`);
  step(`presence: "online" while the peer is connected, "${lastSeen}" after it disconnects`);
  for (let i = 1; i <= 5; i++) {
    await send(alice, `while you were away ${i}`);
    await tick(alice, `while you were away ${i}`, 'sent');
  }
  await bobContext.setOffline(false);
  await seen(bob, 'while you were away 5');
  const seqs = await bob.$$eval('[data-testid=messages] .message', (els) => els.map((e) => [Number(e.dataset.seq), e.querySelector('.text').textContent]));
  const numbers = seqs.map(([s]) => s);
  const unique = new Set(numbers);
  if (unique.size !== numbers.length) throw new Error(`duplicates after the reconnect: ${JSON.stringify(seqs)}`);
  for (let i = 1; i < numbers.length; i++) if (numbers[i] !== numbers[i - 1] + 1) throw new Error(`a gap after the reconnect: ${JSON.stringify(seqs)}`);
  for (let i = 1; i <= 5; i++) if (!seqs.some(([, t]) => t === `while you were away ${i}`)) throw new Error(`message ${i} missing after the reconnect`);
  step(`after the reconnect bob has seqs ${numbers.join(',')}: no gap, no duplicate`);
  await screenshot(bob, 'web', '7-caught-up');
  await alice.waitForFunction(() => document.querySelector('[data-testid=subtitle]')?.textContent === 'online', null, { timeout: WAIT });
  step('presence: "online" again once the peer reconnects');

  // Reconnection backoff, in a browser of its own (Dave, signed up for it; closed after):
  // every WebSocket its page opens is refused (closed at once by the test) while the
  // jitter is pinned to its top (Math.random ≈ 1 for that page load): the attempts come
  // about 0.5, 1 and 2 s apart (the delay doubles).
  const probeContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const probe = await probeContext.newPage();
  probe.on('pageerror', (error) => problems.push(`dave page error: ${error.message}`));
  await signUp(probe, 'dave');
  await probeContext.addInitScript(() => {
    if (sessionStorage.getItem('pin-jitter')) Math.random = () => 0.999;
  });
  const attempts = [];
  await probe.routeWebSocket(/\/v1\/ws$/, (ws) => {
    attempts.push(Date.now());
    ws.close();
  });
  await probe.evaluate(() => sessionStorage.setItem('pin-jitter', '1'));
  await probe.reload();
  const backoffDeadline = Date.now() + 8000;
  while (attempts.length < 4) {
    if (Date.now() > backoffDeadline) throw new Error(`only ${attempts.length} connection attempts in 8 s`);
    await probe.waitForTimeout(100);
  }
  const gaps = attempts.slice(1, 4).map((t, i) => t - attempts[i]);
  const expectedGaps = [500, 1000, 2000];
  gaps.forEach((gap, i) => {
    if (gap < expectedGaps[i] * 0.9 || gap > expectedGaps[i] + 800) throw new Error(`reconnect attempts ${gaps.join(', ')} ms apart, expected about ${expectedGaps.join(', ')}`);
  });
  if (await probe.getAttribute('[data-testid=link]', 'data-state') === 'online') throw new Error('online although every connection was refused');
  await probeContext.close();
  step(`reconnect backoff while the server is unreachable: attempts ${gaps.join(', ')} ms apart (doubling)`);

  // A reload keeps everything (IndexedDB) and shows the list.
  await bob.reload();
  await bob.waitForSelector('[data-testid=link][data-state=online]', { timeout: WAIT });
  await bob.waitForSelector(`[data-conversation="${conversation}"]`);
  await bob.waitForSelector(`[data-conversation="${group}"]`);
  step('a reload restores the conversations from IndexedDB');
  await screenshot(bob, 'web', '8-conversation-list');

  // Names: each sets a profile name; the other sees it live (ProfileChanged) in the list,
  // the chat header and group messages, instead of an id.
  await alice.fill('#my-name', 'Alice Liddell');
  await alice.click('#save-name');
  await alice.waitForFunction(() => document.querySelector('[data-testid=me]')?.textContent.includes('Alice Liddell'), null, { timeout: WAIT });
  await bob.fill('#my-name', 'Bob Builder');
  await bob.click('#save-name');
  const titled = (page, id, title) =>
    page.waitForFunction(([i, t]) => document.querySelector(`[data-conversation="${i}"] .title`)?.textContent === t, [id, title], { timeout: WAIT });
  await titled(bob, conversation, 'Alice Liddell');
  await titled(alice, conversation, 'Bob Builder');
  await openConversation(bob, conversation);
  await bob.waitForFunction(() => document.querySelector('[data-testid=chat-title]')?.textContent === 'Alice Liddell', null, { timeout: WAIT });
  await openConversation(bob, group);
  await bob.waitForFunction(() => [...document.querySelectorAll('[data-testid=sender]')].some((e) => e.textContent === 'Alice Liddell'), null, { timeout: WAIT });
  step('profile names replace ids: the list, the chat header, a group message\'s sender');
  await screenshot(bob, 'web', '9-names');

  // Bob opens a 1:1 with Carol and writes nothing; Alice writes Carol 20 more messages,
  // so that a new device's first catch-up (the newest 20) leaves the first ones out.
  await bob.fill('#new-chat-user', carol);
  await bob.click('#start-chat');
  await opened(bob, group);
  const bobCarol = await bob.getAttribute('.conversation.open', 'data-conversation');
  await alice.fill('#new-chat-user', carol);
  await alice.click('#start-chat');
  await opened(alice, conversation);
  const aliceCarol = await alice.getAttribute('.conversation.open', 'data-conversation');
  for (let i = 1; i <= 20; i++) {
    await send(alice, `filler ${i}`);
    await tick(alice, `filler ${i}`, 'sent');
  }
  step('an empty 1:1 (bob, carol) and 20 more messages from alice to carol');

  // A new browser device of Carol (linked by her CLI primary, POST /v1/devices). Her CLI
  // runs meanwhile (without reading): seeing her new device publish its keys, it forwards
  // the room keys it holds, so the new device can read the history.
  const carolWatch = spawn(BIN, ['client', 'watch', '--no-read', '--profile', carolProfile], { stdio: ['ignore', 'pipe', 'pipe'] });
  await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`carol's CLI did not connect: ${out}`)), WAIT);
    carolWatch.stdout.on('data', (chunk) => {
      out += chunk;
      if (out.includes('connected as user')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const carolCredentials = JSON.parse(readFileSync(carolProfile, 'utf8'));
  const linkedAnswer = await fetch(`${SERVER}/v1/devices`, {
    method: 'POST',
    headers: { authorization: `Bearer ${carolCredentials.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Carol web' }),
  });
  if (linkedAnswer.status !== 201) throw new Error(`POST /v1/devices: ${linkedAnswer.status} ${await linkedAnswer.text()}`);
  const linked = await linkedAnswer.json();
  const carolContext = await browser.newContext({ viewport: { width: 1280, height: 600 } });
  const carolWeb = await carolContext.newPage();
  carolWeb.on('pageerror', (error) => problems.push(`carol page error: ${error.message}`));
  await carolWeb.goto(APP);
  await carolWeb.waitForSelector('[data-testid=signup]');
  await carolWeb.evaluate(
    (p) =>
      new Promise((resolve, reject) => {
        const r = indexedDB.open('switchboard', 1);
        r.onupgradeneeded = () => r.result.createObjectStore('kv');
        r.onerror = () => reject(r.error);
        r.onsuccess = () => {
          const tx = r.result.transaction('kv', 'readwrite');
          tx.objectStore('kv').put(p, 'profile');
          tx.oncomplete = () => (r.result.close(), resolve());
          tx.onerror = () => reject(tx.error);
        };
      }),
    { phone: carolPhone, userId: carol, deviceId: linked.device_id, token: linked.token },
  );
  await carolWeb.reload();
  await carolWeb.waitForSelector('[data-testid=link][data-state=online]', { timeout: WAIT });

  // Its list comes from the server: the 1:1 nobody wrote in (with Bob's name), the group's
  // subject, the unread count, most recent first.
  await titled(carolWeb, bobCarol, 'Bob Builder');
  await titled(carolWeb, aliceCarol, 'Alice Liddell');
  await carolWeb.waitForFunction((g) => document.querySelector(`[data-conversation="${g}"] .title`)?.textContent.endsWith('Team'), group, { timeout: WAIT });
  await carolWeb.waitForFunction((id) => Number(document.querySelector(`[data-conversation="${id}"]`)?.dataset.unread) >= 20, aliceCarol, { timeout: WAIT });
  const order = await carolWeb.$$eval('[data-conversation]', (els) => els.map((e) => e.dataset.conversation));
  if (JSON.stringify(order) !== JSON.stringify([aliceCarol, bobCarol, group])) throw new Error(`list order ${JSON.stringify(order)}, expected alice, bob (empty), group`);
  const unread = await carolWeb.getAttribute(`[data-conversation="${aliceCarol}"]`, 'data-unread');
  step(`a new device's list from the server: an empty 1:1, the group subject, ${unread} unread, most recent first`);
  await screenshot(carolWeb, 'web', '10-new-device-list');

  // A pin made elsewhere (over HTTP) arrives live (InboxChanged) and moves it first.
  const pin = await fetch(`${SERVER}/v1/inbox/${bobCarol}`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${carolCredentials.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ pinned: true }),
  });
  if (pin.status !== 200) throw new Error(`PATCH /v1/inbox: ${pin.status} ${await pin.text()}`);
  await carolWeb.waitForFunction((id) => document.querySelector('[data-conversation]')?.dataset.conversation === id && document.querySelector('[data-conversation]').hasAttribute('data-pinned'), bobCarol, { timeout: WAIT });
  step('a pin made on another device moves the conversation first, live');

  // The chat shows the newest 20; scrolling up loads the older ones (HistoryRequest),
  // decrypted with the keys Carol's CLI forwards to her new device.
  try {
    await openConversation(carolWeb, aliceCarol);
    await seen(carolWeb, 'filler 20');
    const firstShown = await carolWeb.$$eval('[data-testid=messages] [data-seq]', (els) => Math.min(...els.map((e) => Number(e.dataset.seq))));
    if (firstShown <= 4) throw new Error(`the first catch-up already had seq ${firstShown}`);
    await carolWeb.hover('[data-testid=messages]');
    const deadline = Date.now() + WAIT;
    while (!(await carolWeb.$('[data-testid=messages] [data-seq="1"]'))) {
      if (Date.now() > deadline) throw new Error('scrolling up never showed seq 1');
      await carolWeb.mouse.wheel(0, -4000);
      await carolWeb.waitForTimeout(200);
    }
    await seen(carolWeb, `hello carol ${CANARY}`);
    await tick(carolWeb, 'hello from the CLI', 'read');
    const shown = await carolWeb.$$eval('[data-testid=messages] [data-seq]', (els) => els.map((e) => Number(e.dataset.seq)));
    for (let i = 0; i < shown.length; i++) if (shown[i] !== i + 1) throw new Error(`after scrolling up: seqs ${shown.join(',')} (expected 1.. in order, once each)`);
    step(`scrolling up loaded seqs 1..${firstShown - 1} (first catch-up started at ${firstShown}): decrypted, in order, no duplicate; carol's own CLI message shows blue ✓✓`);
    await carolWeb.mouse.wheel(0, -4000);
    await carolWeb.waitForFunction(() => document.querySelector('[data-testid=messages]').scrollTop === 0, null, { timeout: WAIT });
    await screenshot(carolWeb, 'web', '11-history-on-scroll');
  } catch (error) {
    await screenshot(carolWeb, 'web', 'failure-new-device');
    const shown = await carolWeb.$$eval('[data-testid=messages] li', (els) => els.map((e) => `${e.dataset.seq}:${e.dataset.status ?? ''}:${e.textContent}`));
    throw new Error(`${error.message}\nthe new device shows:\n${shown.join('\n')}`);
  } finally {
    carolWatch.kill();
  }
  // Chat changes made elsewhere (over HTTP) arrive live: muted and archived.
  const changed = await fetch(`${SERVER}/v1/inbox/${group}`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${carolCredentials.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ muted_until_ms: Date.now() + 3_600_000, archived: true }),
  });
  if (changed.status !== 200) throw new Error(`PATCH /v1/inbox: ${changed.status} ${await changed.text()}`);
  await carolWeb.waitForSelector(`[data-testid=archived] ~ [data-conversation="${group}"][data-muted] [data-testid=muted]`, { timeout: WAIT });
  step('mute and archive made on another device apply live: muted icon, Archived section');
  await carolContext.close();

  // Delete for everyone, edit, react: Alice and Bob in their 1:1.
  const chat = async (page, id) => {
    await page.click(`[data-conversation="${id}"]`);
    await page.waitForSelector(`.conversation.open[data-conversation="${id}"]`);
  };
  const seqOf = (page, text) => page.$$eval('[data-testid=messages] .message', (els, t) => Number(els.find((e) => e.querySelector('.text')?.textContent === t)?.dataset.seq ?? 0), text);
  await chat(alice, conversation);
  await chat(bob, conversation);
  await send(alice, 'a tpyo here');
  await send(alice, 'oops, wrong chat');
  await tick(alice, 'oops, wrong chat', 'read');
  const typo = await seqOf(alice, 'a tpyo here');
  const wrong = await seqOf(alice, 'oops, wrong chat');
  alice.once('dialog', (d) => d.accept());
  await alice.click(`[data-testid=messages] [data-seq="${wrong}"] [data-testid=delete]`);
  const bubbleText = (page, seq, text) =>
    page.waitForFunction(([s, t]) => document.querySelector(`[data-testid=messages] [data-seq="${s}"] .text`)?.textContent === t, [seq, text], { timeout: WAIT });
  await bubbleText(bob, wrong, 'This message was deleted');
  await bubbleText(alice, wrong, 'This message was deleted');
  step('delete for everyone: the other browser shows "This message was deleted"');
  alice.once('dialog', (d) => d.accept('a typo here, fixed'));
  await alice.click(`[data-testid=messages] [data-seq="${typo}"] [data-testid=edit]`);
  await bubbleText(bob, typo, 'a typo here, fixed');
  await bob.waitForSelector(`[data-testid=messages] [data-seq="${typo}"] [data-testid=edited]`);
  await bob.click(`[data-testid=messages] [data-seq="${typo}"] [data-testid=react][data-emoji="👍"]`);
  await alice.waitForSelector(`[data-testid=messages] [data-seq="${typo}"] [data-testid=reactions] [data-emoji="👍"]`, { timeout: WAIT });
  const bubbles = await bob.$$eval('[data-testid=messages] .message', (els) => els.length);
  const atBob = await bob.$$eval('[data-testid=messages] .message', (els) => els.map((e) => Number(e.dataset.seq)));
  if (new Set(atBob).size !== atBob.length) throw new Error(`an edit or reaction shown as a message of its own: ${atBob}`);
  step(`edit (shown edited) and reaction (shown under the message) reach the other browser; ${bubbles} bubbles, none for the edit or reaction`);
  await screenshot(alice, 'web', '12-edit-react-delete');

  // Notifications while Alice's tab is hidden: Bob's message and his reaction to hers, one
  // tag for the conversation (they collapse); a click opens that chat.
  const expectNotifications = async (expected, what) => {
    await alice.waitForFunction((n) => window.__notifications.length >= n, expected.length, { timeout: WAIT }).catch(() => {});
    const got = await notifications(alice);
    if (JSON.stringify(got) !== JSON.stringify(expected)) throw new Error(`${what}: notifications ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`);
  };
  const lastText = (page, id, text) => page.waitForFunction(([i, t]) => document.querySelector(`[data-conversation="${i}"] .last`)?.textContent === t, [id, text], { timeout: WAIT });
  await send(alice, 'react to this');
  await tick(alice, 'react to this', 'read');
  const reactTarget = await seqOf(alice, 'react to this');
  await alice.evaluate(() => window.__setHidden(true));
  await chat(alice, aliceCarol);
  await send(bob, 'are you there?');
  await bob.click(`[data-testid=messages] [data-seq="${reactTarget}"] [data-testid=react][data-emoji="❤️"]`);
  const expected = [
    { title: 'Bob Builder', body: 'are you there?', tag: conversation },
    { title: 'Bob Builder', body: 'Reacted ❤️ to “react to this”', tag: conversation },
  ];
  await expectNotifications(expected, 'a message and a reaction while hidden');
  await alice.evaluate(() => window.__notifications.at(-1).n.dispatchEvent(new Event('click')));
  await alice.waitForSelector(`.conversation.open[data-conversation="${conversation}"]`, { timeout: WAIT });
  step('hidden tab: a notification for a message and one for a reaction (sender\'s name, text, one tag per chat); a click opens the chat');

  // Muted for 8 hours, no push: no notification, and the list says so until when.
  await alice.selectOption('[data-testid=mute-push]', 'off');
  await alice.selectOption('[data-testid=mute]', '8h');
  await alice.waitForSelector(`[data-conversation="${conversation}"][data-muted-push=off] [data-testid=muted]`, { timeout: WAIT });
  const label = await alice.getAttribute(`[data-conversation="${conversation}"] [data-testid=muted]`, 'title');
  const until = await alice.textContent('[data-testid=muted-until]');
  if (!label.startsWith('Muted until') || !label.endsWith('no push') || !until.includes('no push')) throw new Error(`muted for 8 hours shows "${label}" / "${until}"`);
  await send(bob, 'muted ping');
  await lastText(alice, conversation, 'muted ping');
  await expectNotifications(expected, 'a muted chat');
  step(`muted for 8 hours with no push (${label}): no notification`);
  await screenshot(alice, 'web', '12b-muted');
  await alice.click('[data-testid=unmute]');
  await alice.waitForSelector(`[data-conversation="${conversation}"]:not([data-muted])`, { timeout: WAIT });
  await alice.selectOption('[data-testid=mute]', '1w');
  await alice.waitForSelector(`[data-conversation="${conversation}"][data-muted-push=silent] [data-testid=muted]`, { timeout: WAIT });
  const weekLabel = await alice.getAttribute(`[data-conversation="${conversation}"] [data-testid=muted]`, 'title');
  const inAWeek = await alice.evaluate(() => new Date(Date.now() + 7 * 86_400_000).toLocaleDateString([], { dateStyle: 'short' }));
  if (!weekLabel.includes(inAWeek) || !weekLabel.endsWith('silent push')) throw new Error(`muted for a week shows "${weekLabel}" (expected ${inAWeek}, silent push)`);
  await alice.click('[data-testid=unmute]');
  await alice.waitForSelector(`[data-conversation="${conversation}"]:not([data-muted])`, { timeout: WAIT });
  step(`muted for a week with silent push (${weekLabel}), then unmuted`);

  // A mute that ends (set elsewhere, over HTTP, for 3 s): the 🔇 shows, then goes by itself.
  const aliceCredentials = await credentials(alice);
  const shortMute = await fetch(`${SERVER}/v1/inbox/${conversation}`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${aliceCredentials.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ muted_until_ms: Date.now() + 3000 }),
  });
  if (shortMute.status !== 200) throw new Error(`PATCH /v1/inbox: ${shortMute.status} ${await shortMute.text()}`);
  await alice.waitForSelector(`[data-conversation="${conversation}"] [data-testid=muted]`, { timeout: WAIT });
  await alice.waitForSelector(`[data-conversation="${conversation}"]:not([data-muted])`, { timeout: WAIT });
  step('a mute that ends: 🔇 until then, gone after');

  // Visible with the chat open: no notification (the message is read at once).
  await alice.evaluate(() => window.__setHidden(false));
  await send(bob, 'visible ping');
  await seen(alice, 'visible ping');
  await tick(bob, 'visible ping', 'read');
  await expectNotifications(expected, 'the open chat while visible');
  step('no notification for the chat open in a visible tab');

  // Pin (at most 3: a fourth is refused, clearly), mute, archive, clear, from the chat header.
  await alice.fill('#new-group-subject', 'Extra');
  await alice.fill('#new-group-members', bobId);
  await alice.click('#create-group');
  await alice.waitForFunction(() => document.querySelector('[data-testid=chat-title]')?.textContent === 'Extra', null, { timeout: WAIT });
  const extra = await alice.getAttribute('.conversation.open', 'data-conversation');
  for (const id of [group, aliceCarol, conversation]) {
    await chat(alice, id);
    await alice.click('[data-testid=pin]');
    await alice.waitForSelector(`[data-conversation="${id}"][data-pinned]`, { timeout: WAIT });
  }
  const firstThree = await alice.$$eval('[data-conversation]', (els) => els.slice(0, 3).map((e) => e.dataset.conversation));
  if (JSON.stringify(firstThree) !== JSON.stringify([conversation, aliceCarol, group])) throw new Error(`pinned order ${firstThree}`);
  await chat(alice, extra);
  await alice.click('[data-testid=pin]');
  await alice.waitForFunction(() => document.querySelector('.side [role=status]')?.textContent.includes('pin up to 3'), null, { timeout: WAIT });
  step('three chats pinned first (latest first); a fourth pin shows the server\'s refusal');
  await alice.click('[data-testid=archive]');
  await alice.waitForSelector(`[data-testid=archived] ~ [data-conversation="${extra}"][data-archived]`, { timeout: WAIT });
  await chat(alice, conversation);
  await alice.selectOption('[data-testid=mute]', 'always');
  await alice.waitForSelector(`[data-conversation="${conversation}"] [data-testid=muted][title="Muted always, silent push"]`, { timeout: WAIT });
  step('archived chats go to the Archived section; a chat muted always shows 🔇');
  await screenshot(alice, 'web', '13-chat-actions');
  alice.once('dialog', (d) => d.accept());
  await alice.click('[data-testid=clear]');
  await alice.waitForFunction(() => document.querySelectorAll('[data-testid=messages] .message').length === 0, null, { timeout: WAIT });
  await send(bob, 'after the clear');
  await seen(alice, 'after the clear');
  const afterClear = await alice.$$eval('[data-testid=messages] .message .text', (els) => els.map((e) => e.textContent));
  if (afterClear.length !== 1) throw new Error(`after clearing, alice shows ${JSON.stringify(afterClear)}`);
  await bubbleText(bob, typo, 'a typo here, fixed');
  step('clearing a chat removes its older messages on this device only; new ones still come');

  // Group members after creation: Alice adds Carol to "Extra", then removes Bob; Bob's browser sees both.
  await chat(bob, extra);
  await chat(alice, extra);
  const subtitleIs = (page, text) => page.waitForFunction((t) => document.querySelector('[data-testid=subtitle]')?.textContent === t, text, { timeout: WAIT });
  await subtitleIs(bob, '2 members');
  await alice.click('[data-testid=members-toggle]');
  await alice.fill('#add-member', carol);
  await alice.click('[data-testid=add-members]');
  await subtitleIs(bob, '3 members');
  await bob.waitForFunction(() => [...document.querySelectorAll('[data-testid=messages] .system')].some((e) => e.textContent.endsWith(' added')), null, { timeout: WAIT });
  await alice.waitForSelector(`[data-testid=group-members] [data-member="${carol}"]`, { timeout: WAIT });
  await screenshot(alice, 'web', '14-group-members');
  await alice.click(`[data-member="${bobId}"] [data-testid=remove-member]`);
  await subtitleIs(bob, 'You are no longer a member');
  await subtitleIs(alice, '2 members');
  step('group members changed after creation (add, remove): the other browser sees each change');
  await bob.waitForSelector('#composer:disabled', { timeout: WAIT });
  if (await bob.$('[data-testid=group-members]')) throw new Error('a removed member still has the group panel');
  step('removed: the chat says so and its composer is disabled');

  // An invite link: Alice (admin) creates it, Bob pastes it and is back in.
  const systemLine = (page, text) => page.waitForFunction((t) => [...document.querySelectorAll('[data-testid=messages] .system')].some((e) => e.textContent === t), text, { timeout: WAIT });
  const groupProblem = (page, code) => page.waitForFunction((c) => document.querySelector('[data-testid=group-problem]')?.textContent.includes(c), code, { timeout: WAIT });
  const badge = (page, user, on) => page.waitForFunction(([u, b]) => !!document.querySelector(`[data-testid=group-members] [data-member="${u}"] [data-testid=admin-badge]`) === b, [user, on], { timeout: WAIT });
  await alice.click('[data-testid=create-invite]');
  await alice.waitForSelector('[data-testid=invite-link]', { timeout: WAIT });
  const inviteLink = await alice.inputValue('[data-testid=invite-link]');
  if (!/\/app\/#join=[0-9a-f]{32}$/.test(inviteLink)) throw new Error(`invite link ${inviteLink}`);
  await bob.fill('#join-link', inviteLink);
  await bob.click('#join-group');
  await bob.waitForSelector(`.conversation.open[data-conversation="${extra}"]`, { timeout: WAIT });
  await subtitleIs(bob, '3 members');
  await bob.waitForSelector('#composer:enabled', { timeout: WAIT });
  await systemLine(alice, 'Bob Builder joined with an invite link');
  step('an invite link made by the admin; pasted by a former member, who is back in (3 members, composer enabled)');

  // Bob is no admin: no admin controls, and the server refuses what he tries.
  await bob.click('[data-testid=members-toggle]');
  await badge(bob, aliceId, true);
  if (await bob.$('[data-testid=promote], [data-testid=create-invite]')) throw new Error('a member who is not an admin sees admin controls');
  await bob.fill('#add-member', aliceId);
  await bob.click('[data-testid=add-members]');
  await groupProblem(bob, 'NOT_ADMIN');
  step(`a member's admin-only change shows the server's refusal: ${await bob.textContent('[data-testid=group-problem]')}`);

  // Promote: the badge on both sides, and Bob gets the admin controls; he renames the group
  // and every member's title follows.
  await alice.click(`[data-member="${bobId}"] [data-testid=promote]`);
  await badge(alice, bobId, true);
  await badge(bob, bobId, true);
  await bob.waitForSelector(`[data-member="${carol}"] [data-testid=promote]`, { timeout: WAIT });
  await systemLine(bob, 'Bob Builder is now an admin');
  await bob.fill('#group-subject', 'Extra renamed');
  await bob.click('[data-testid=set-subject]');
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => document.querySelector('[data-testid=chat-title]')?.textContent === 'Extra renamed', null, { timeout: WAIT });
    await page.waitForFunction((g) => document.querySelector(`[data-conversation="${g}"] .title`)?.textContent.endsWith('Extra renamed'), extra, { timeout: WAIT });
  }
  await systemLine(alice, 'Subject: Extra renamed');
  step('promoted: "admin" badge in both browsers; the new admin renames the group, live for every member');
  await screenshot(bob, 'web', '15-group-admin');

  // Demote Bob; then Alice, the last admin, cannot demote herself.
  await alice.click(`[data-member="${bobId}"] [data-testid=demote]`);
  await badge(bob, bobId, false);
  await badge(alice, bobId, false);
  await alice.click(`[data-member="${aliceId}"] [data-testid=demote]`);
  await groupProblem(alice, 'INVALID_ARGUMENT');
  step(`demoted: the badge goes; the last admin's own demotion is refused: ${await alice.textContent('[data-testid=group-problem]')}`);

  // Bob leaves (after confirming): read-only for him, one member fewer for Alice.
  bob.once('dialog', (d) => d.accept());
  await bob.click('[data-testid=leave-group]');
  await subtitleIs(bob, 'You are no longer a member');
  await bob.waitForSelector('#composer:disabled', { timeout: WAIT });
  await subtitleIs(alice, '2 members');
  await systemLine(alice, 'Bob Builder left');
  step('left the group: "no longer a member", composer disabled; the others see him leave');
  await screenshot(bob, 'web', '16-left-group');

  // The revoked link no longer works: the refusal shows.
  await alice.click('[data-testid=revoke-invite]');
  await alice.waitForFunction(() => !document.querySelector('[data-testid=invite-link]') && !document.querySelector('[data-testid=revoke-invite]'), null, { timeout: WAIT });
  // (Opened as a link this time: the app fills the join form in from it.)
  await bob.goto(inviteLink);
  await bob.waitForFunction((l) => document.querySelector('#join-link')?.value === l, inviteLink, { timeout: WAIT });
  await bob.click('#join-group');
  await bob.waitForFunction(() => document.querySelector('.side [role=status]')?.textContent.includes('INVALID_INVITE'), null, { timeout: WAIT });
  step(`a revoked invite link, opened as a link (the join form fills in), is refused: ${await bob.textContent('.side [role=status]')}`);
  await bobContext.close();
});
console.log('web client test passed');
