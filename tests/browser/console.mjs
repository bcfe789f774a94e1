// End-to-end test of the SRE console (/admin/ui/) in headless Chromium, run by
// tests/browser_console.rs against a private server it started with some traffic.
//
// Env: SWITCHBOARD_CONSOLE_URL (the console's URL), SWITCHBOARD_ADMIN_TOKEN,
// SWITCHBOARD_CONVERSATION_ID (a conversation active on that node).
// Checks: a wrong token is refused; the tree shows the node's supervisors and the
// conversation; expand/collapse survives refreshes; the conversation crashed through the
// console (after its confirmation) comes back and its supervisor's restart count went up;
// the hot-actor and cluster panels render; a drain needs the typed confirmation.
// Screenshots of each screen go to target/browser-artifacts/console-*.png.
import { env, run, screenshot, step } from './lib.mjs';

const url = env('SWITCHBOARD_CONSOLE_URL');
const token = env('SWITCHBOARD_ADMIN_TOKEN');
const conversation = env('SWITCHBOARD_CONVERSATION_ID');
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
