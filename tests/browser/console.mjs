// End-to-end test of the SRE console (/admin/ui/) in headless Chromium, run by
// tests/browser_console.rs against a private server it started with some traffic.
//
// Env: SWITCHBOARD_CONSOLE_URL (the console's URL), SWITCHBOARD_ADMIN_TOKEN,
// SWITCHBOARD_CONVERSATION_ID (a conversation active on that node), SWITCHBOARD_SIGNAL_FILE (created once the
// counts are read: the test then opens one more conversation).
// Checks: a wrong token is refused; the tree shows the node's supervisors and the
// conversation; expand/collapse survives refreshes; the conversation crashed through the
// console (after its confirmation) comes back and its supervisor's restart count went up;
// a supervisor of more than 20 children lists 20 and says how many more; a conversation
// opened meanwhile shows without a click (auto refresh); the deepest mailboxes list the
// actor with messages waiting; the cluster panel renders; a drain needs the typed
// confirmation.
// Screenshots of each screen go to target/browser-artifacts/console-*.png.
import { writeFileSync } from 'node:fs';
import { env, run, screenshot, step } from './lib.mjs';

const url = env('SWITCHBOARD_CONSOLE_URL');
const token = env('SWITCHBOARD_ADMIN_TOKEN');
const conversation = env('SWITCHBOARD_CONVERSATION_ID');
const signalFile = env('SWITCHBOARD_SIGNAL_FILE');
const SHOT = 'console';
const TIMEOUT = 10_000;

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

await run(SHOT, async ({ page }) => {
  page.setDefaultTimeout(TIMEOUT);

  // ---- the page and its headers ---------------------------------------------------
  const response = await page.goto(url);
  expect(response && response.ok(), `GET ${url} answered ${response && response.status()}`);
  const headers = response.headers();
  expect((headers['content-security-policy'] || '').includes("script-src 'self'"), `no CSP on the page: ${JSON.stringify(headers)}`);
  expect(headers['x-frame-options'] === 'DENY', 'the page may be framed');
  step('console page served with its CSP and X-Frame-Options');

  // ---- login: a wrong token is refused, the right one opens the console -------------
  await page.getByTestId('login').waitFor();
  await screenshot(page, SHOT, '1-login');
  await page.getByTestId('token').fill('not-the-token');
  await page.getByTestId('login-button').click();
  await page.getByTestId('login-error').filter({ hasText: 'refused' }).waitFor();
  step('a wrong token is refused');
  await page.getByTestId('token').fill(token);
  await page.getByTestId('login-button').click();

  // ---- the tree -----------------------------------------------------------------------
  const supervisor = (name) => page.locator(`li[data-name="${name}"]`);
  for (const name of ['session-supervisor', 'conversation-supervisor', 'store-writer']) {
    await supervisor(name).first().waitFor();
  }
  step('the tree shows the node\'s supervisors');
  const row = page.locator(`li[data-conversation="${conversation}"]`);
  await row.waitFor();
  step(`the tree lists conversation ${conversation}`);
  await screenshot(page, SHOT, '2-tree');

  // More children than the tree lists: a sample of 20 and a line counting the rest.
  const children = async (name) => Number((await supervisor(name).locator(':scope > .row .children').textContent()).match(/^(\d+) child/)?.[1]);
  const sessions = supervisor('session-supervisor');
  const total = await children('session-supervisor');
  const listed = await sessions.locator(':scope > ul > li[data-name]').count();
  const sampled = await sessions.locator(':scope > ul > li.sampled').textContent();
  expect(total > 20, `the session supervisor shows ${total} children, expected more than 20`);
  expect(listed === 20, `${listed} sessions listed, expected a sample of 20`);
  expect(sampled === `${total - 20} more not listed (a sample of 20 of ${total}, busiest first)`, `the sampled line says "${sampled}" for ${total} children`);
  step(`${total} sessions: 20 listed, "${sampled}"`);

  // Auto refresh: the test opens one more conversation now (from one more device); both
  // counts go up with no click.
  const conversations = await children('conversation-supervisor');
  const shownAt = Date.now();
  writeFileSync(signalFile, String(conversations));
  await page.waitForFunction(
    ([c, s]) => {
      const count = (name) => Number(document.querySelector(`li[data-name="${name}"] > .row .children`)?.textContent.match(/^(\d+)/)?.[1]);
      return count('conversation-supervisor') > c && count('session-supervisor') > s;
    },
    [conversations, total],
    { timeout: 8000 },
  );
  const newSessions = await children('session-supervisor');
  const newSampled = await sessions.locator(':scope > ul > li.sampled').textContent();
  expect(newSampled === `${newSessions - 20} more not listed (a sample of 20 of ${newSessions}, busiest first)`, `the sampled line did not follow the new count: "${newSampled}"`);
  step(`auto refresh, no click: ${conversations} -> ${await children('conversation-supervisor')} conversations, ${total} -> ${newSessions} sessions, shown ${Date.now() - shownAt} ms after the change was asked for`);

  const convSupervisor = supervisor('conversation-supervisor');
  const toggle = convSupervisor.locator(':scope > .row > .toggle');
  await toggle.click();
  await row.waitFor({ state: 'detached' });
  // Two refreshes later it is still collapsed.
  await page.waitForTimeout(4500);
  expect(await row.count() === 0, 'a collapsed supervisor opened again on refresh');
  await convSupervisor.locator(':scope > .row > .toggle').click();
  await row.waitFor();
  step('collapse and expand hold across refreshes');

  const restarts = async () => Number(await convSupervisor.locator(':scope > .row .restarts').textContent());
  const before = await restarts();
  expect(Number.isFinite(before), 'no restart count on the conversation supervisor');

  // ---- crash the conversation through the console ------------------------------------
  await row.locator(':scope > .row > button.crash').click();
  const dialog = page.getByTestId('confirm');
  await dialog.waitFor({ state: 'visible' });
  expect((await dialog.textContent()).includes(conversation), 'the confirmation does not name the conversation');
  await screenshot(page, SHOT, '3-crash-confirmation');
  await page.getByTestId('confirm-ok').click();
  await page.getByTestId('action-result').filter({ hasText: 'crashed conversation' }).waitFor();
  step('crash confirmed and accepted by the server');
  const deadline = Date.now() + 15_000;
  let after = before;
  while (after <= before) {
    expect(Date.now() < deadline, `the restart count stayed at ${after}`);
    await page.waitForTimeout(250);
    after = await restarts();
  }
  await row.waitFor();
  step(`the conversation came back; its supervisor's restarts went from ${before} to ${after}`);
  await screenshot(page, SHOT, '4-tree-after-crash');

  // ---- hot actors ----------------------------------------------------------------------
  await page.getByTestId('tab-hot').click();
  await page.getByTestId('hot-panel').waitFor({ state: 'visible' });
  await page.locator('#hot-busiest tr[data-id]').first().waitFor();
  const busiest = await page.locator('#hot-busiest tr[data-id] td.name').allTextContents();
  expect(busiest.length > 0, 'no busy actor listed');
  step(`hot actors: ${busiest.length} busiest listed, first "${busiest[0]}"`);
  // The test keeps a load of pipelined sends going, so some mailbox has messages waiting
  // now and then (about one sample in ten): pausing and resuming (which refreshes at once)
  // samples more often than the 2 s polling, until the table lists such an actor.
  const waitingRow = () =>
    page.evaluate(() => {
      const row = [...document.querySelectorAll('#hot-deepest tr[data-id]')].find((tr) => Number(tr.querySelectorAll('td')[1]?.textContent) > 0);
      return row ? [...row.querySelectorAll('td')].map((td) => td.textContent) : null;
    });
  const deepDeadline = Date.now() + 30_000;
  let refreshes = 0;
  let deepCells;
  while (!(deepCells = await waitingRow())) {
    expect(Date.now() < deepDeadline, `no actor with messages waiting in the deepest mailboxes after ${refreshes} refreshes under load`);
    await page.locator('#pause').check();
    await page.locator('#pause').uncheck();
    refreshes += 1;
    await page.waitForTimeout(150);
  }
  expect(!(await page.locator('#pause').isChecked()), 'polling was left paused');
  expect(/^(conversation|session|store-writer|push-dispatcher)/.test(deepCells[0]) && Number(deepCells[1]) > 0, `the deepest mailbox row: ${deepCells}`);
  step(`deepest mailboxes: "${deepCells[0]}" with ${deepCells[1]} messages waiting (after ${refreshes} extra refreshes)`);
  await screenshot(page, SHOT, '5-hot-actors');

  // ---- cluster ---------------------------------------------------------------------------
  await page.getByTestId('tab-cluster').click();
  await page.getByTestId('cluster-panel').waitFor({ state: 'visible' });
  await page.locator('#cluster-nodes tr[data-node]').first().waitFor();
  const cells = await page.locator('#cluster-nodes tr[data-node]').first().locator('td').allTextContents();
  expect(cells.length === 7 && /^\d+/.test(cells[3]) && /^\d+/.test(cells[4]), `cluster row without counts: ${cells}`);
  step(`cluster panel: ${cells.join(' | ')}`);
  await screenshot(page, SHOT, '6-cluster');

  // A drain needs the typed confirmation; this single node refuses it (not clustered).
  await page.getByTestId('drain').click();
  await dialog.waitFor({ state: 'visible' });
  const ok = page.getByTestId('confirm-ok');
  expect(await ok.isDisabled(), 'drain can be confirmed without typing the node');
  const expected = await page.locator('#confirm-expected').textContent();
  await page.getByTestId('confirm-typed').fill(expected);
  expect(await ok.isEnabled(), 'typing the name did not enable the drain');
  await screenshot(page, SHOT, '7-drain-confirmation');
  await ok.click();
  await page.getByTestId('drain-result').filter({ hasText: /refused|draining/ }).waitFor();
  step(`drain: ${await page.getByTestId('drain-result').textContent()}`);

  await page.getByTestId('tab-drills').click();
  await page.getByTestId('drills-panel').waitFor({ state: 'visible' });
  await screenshot(page, SHOT, '8-drills');
});
console.log('console test passed');
