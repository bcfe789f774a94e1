// Shared helpers of the browser tests: headless Chromium through playwright-core (the
// distribution's Chromium, never a downloaded browser), screenshots as test artifacts,
// and failures that say what to do. Reused by every browser test script of this folder.
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** The Chromium binary: SWITCHBOARD_CHROMIUM, or the distribution's /usr/bin/chromium. */
export const CHROMIUM = process.env.SWITCHBOARD_CHROMIUM || '/usr/bin/chromium';

/** Where screenshots go: SWITCHBOARD_BROWSER_ARTIFACTS, or target/browser-artifacts. */
export const ARTIFACTS = resolve(process.env.SWITCHBOARD_BROWSER_ARTIFACTS || join(import.meta.dirname, '..', '..', 'target', 'browser-artifacts'));

/** A required environment variable, or a loud failure. */
export function env(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set (this script is run by a Rust integration test that sets it)`);
  return value;
}

/** Prints the reason and exits non-zero. */
export function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

/** One line of progress, for the Rust test's report. */
export function step(message) {
  console.log(`ok: ${message}`);
}

/**
 * Starts headless Chromium with a fresh context (`args`: more command-line switches).
 * Fails loudly (never skips) when the browser or playwright-core is missing.
 */
export async function launch(args = []) {
  if (!existsSync(CHROMIUM)) {
    fail(`Chromium not found at ${CHROMIUM}: run scripts/install-deps.sh (installs the distribution's chromium package), or set SWITCHBOARD_CHROMIUM`);
  }
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (error) {
    fail(`playwright-core is not installed in tests/browser: run scripts/install-deps.sh (npm ci there) (${error.message})`);
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // /dev/shm is small in containers; Chromium then uses /tmp.
    args: ['--disable-dev-shm-usage', ...args],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  // Any script error or CSP violation in the page fails the test.
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !/status of 4\d\d/.test(message.text())) problems.push(`console error: ${message.text()}`);
  });
  mkdirSync(ARTIFACTS, { recursive: true });
  return { browser, context, page, problems };
}

/** Saves a full-page screenshot as `<prefix>-<name>.png` in the artifacts folder. */
export async function screenshot(page, prefix, name) {
  const path = join(ARTIFACTS, `${prefix}-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  step(`screenshot ${path}`);
  return path;
}

/** Runs `body` with a browser; a thrown error becomes a failure, with a screenshot. */
export async function run(prefix, body) {
  const session = await launch();
  try {
    await body(session);
    if (session.problems.length) fail(session.problems.join('\n'));
  } catch (error) {
    try {
      await screenshot(session.page, prefix, 'failure');
    } catch (_) {
      // the page may be gone
    }
    const extra = session.problems.length ? `\n${session.problems.join('\n')}` : '';
    await session.browser.close().catch(() => {});
    fail(`${error.stack || error.message}${extra}`);
  }
  await session.browser.close();
}
