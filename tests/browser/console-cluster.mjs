// The SRE console's cluster view against a live two-node cluster, run by
// tests/cluster.rs (`the_console_shows_every_node_of_a_live_cluster`).
//
// Env: SWITCHBOARD_CONSOLE_URL (node n0's console), SWITCHBOARD_ADMIN_TOKEN,
// SWITCHBOARD_EXPECT_SESSIONS (JSON: node name → sessions connected there).
// Checks: the cluster panel lists every node with its sessions as the nodes report them,
// and Redis as reachable; the tree of the other node opens from this node's console.
// Screenshots go to target/browser-artifacts/console-cluster-*.png.
import { env, run, screenshot, step } from './lib.mjs';

const url = env('SWITCHBOARD_CONSOLE_URL');
const token = env('SWITCHBOARD_ADMIN_TOKEN');
const expected = JSON.parse(env('SWITCHBOARD_EXPECT_SESSIONS'));
const SHOT = 'console-cluster';

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

await run(SHOT, async ({ page }) => {
  page.setDefaultTimeout(20_000);
  await page.goto(url);
  await page.getByTestId('token').fill(token);
  await page.getByTestId('login-button').click();
  await page.locator('li[data-name="session-supervisor"]').first().waitFor();
  step('logged in');

  await page.getByTestId('tab-cluster').click();
  await page.getByTestId('cluster-panel').waitFor({ state: 'visible' });
  // Other nodes' counts arrive with their heartbeats: wait until every row says what
  // the test connected there.
  const names = Object.keys(expected);
  const deadline = Date.now() + 20_000;
  let seen = {};
  for (;;) {
    seen = {};
    for (const row of await page.locator('#cluster-nodes tr[data-node]').all()) {
      const cells = await row.locator('td').allTextContents();
      seen[await row.getAttribute('data-node')] = { status: cells[1], member: cells[2], sessions: parseInt(cells[3], 10) };
    }
    const done = names.every((n) => seen[n] && seen[n].sessions === expected[n] && seen[n].member === 'yes');
    if (done && Object.keys(seen).length === names.length) break;
    expect(Date.now() < deadline, `cluster panel never showed ${JSON.stringify(expected)}: ${JSON.stringify(seen)}`);
    await page.waitForTimeout(500);
  }
  step(`cluster panel: ${JSON.stringify(seen)}`);
  await page.locator('#redis').filter({ hasText: 'Redis: ok' }).waitFor();
  step(`redis: ${await page.locator('#redis').textContent()}`);
  await screenshot(page, SHOT, '1-nodes');

  // The other node's tree, from this node's console.
  const other = names.find((n) => seen[n].status.indexOf('self') < 0);
  expect(other, `no other node in ${JSON.stringify(seen)}`);
  const answered = page.waitForResponse((r) => r.url().includes(`/admin/tree?node=${other}`) && r.status() === 200);
  await page.getByTestId('tree-node').selectOption(other);
  await answered;
  await page.getByTestId('tab-tree').click();
  await page.locator('li[data-name="session-supervisor"]').first().waitFor();
  step(`the tree of ${other} opened from this node's console`);
  await screenshot(page, SHOT, '2-other-tree');
  step('console cluster test passed');
});
