/** Entry point: loads libolm, then shows sign-up or, for a device already signed up, the conversations. */
import { App } from './app';
import { loadOlm } from './crypto/olm-lib';
import type { Profile } from './net/api';
import * as db from './state/db';
import { mainView } from './ui/main-view';
import { signup } from './ui/signup';

async function boot(): Promise<void> {
  const root = document.getElementById('app');
  if (!root) return;
  await loadOlm();
  let profile = await db.get<Profile>('profile');
  if (!profile) {
    profile = await signup(root);
    await db.put('profile', profile);
  }
  const app = new App(profile);
  const render = mainView(root, app);
  // Many frames arrive in a burst (catch-up): render at most every 50 ms.
  let scheduled = false;
  app.onChange = () => {
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => {
      scheduled = false;
      render();
    }, 50);
  };
  await app.start();
  render();
}

boot().catch((error: unknown) => {
  const root = document.getElementById('app');
  if (root) root.textContent = `Switchboard could not start: ${String(error)}`;
});
