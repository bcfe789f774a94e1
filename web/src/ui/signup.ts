/** The sign-up screen: phone number, one-time code (filled in by a development server), then the device's token. */
import { register, verify } from '../net/api';
import type { Profile } from '../net/api';
import { h, replace } from './dom';

/** Renders sign-up into `root`; resolves with the new profile. */
export function signup(root: HTMLElement): Promise<Profile> {
  return new Promise((resolve) => {
    const phone = h('input', { id: 'phone', type: 'tel', placeholder: '+14155550123', autocomplete: 'tel', required: true });
    const code = h('input', { id: 'code', inputmode: 'numeric', placeholder: '6-digit code', autocomplete: 'one-time-code' });
    const status = h('p', { class: 'status', role: 'status' });
    const codeStep = h('div', { class: 'step', hidden: true }, h('label', { for: 'code' }, 'Code'), code, h('button', { id: 'verify', type: 'submit' }, 'Verify'));
    const form = h(
      'form',
      { class: 'signup', 'data-testid': 'signup' },
      h('h1', {}, 'Switchboard'),
      h('p', {}, 'Sign up with your phone number.'),
      h('label', { for: 'phone' }, 'Phone number'),
      phone,
      h('button', { id: 'send-code', type: 'button', onclick: askCode }, 'Send code'),
      codeStep,
      status,
    );
    async function askCode(): Promise<void> {
      try {
        status.textContent = 'Sending code…';
        const dev = await register(phone.value.trim());
        codeStep.hidden = false;
        if (dev) code.value = dev;
        status.textContent = dev ? 'Development server: the code is filled in.' : 'Code sent.';
      } catch (error) {
        status.textContent = `Could not send a code: ${(error as Error).message}`;
      }
    }
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      status.textContent = 'Verifying…';
      verify(phone.value.trim(), code.value.trim()).then(resolve, (error: Error) => (status.textContent = `Could not verify: ${error.message}`));
    });
    replace(root, form);
  });
}
