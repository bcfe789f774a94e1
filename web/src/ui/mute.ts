/**
 * Muting a chat: for 8 hours, a week or always, with silent pushes (a badge, no sound) or
 * no push at all while muted (`UpdateChat.muted_until_ms` and `muted_push`); whether a
 * chat is muted now and what its 🔇 says; and the time the next mute ends, so the list
 * drops its 🔇 then.
 */
import type { App } from '../app';
import type { Conversation } from '../state/chats';
import { h } from './dom';

const HOUR = 3_600_000;
/** The durations offered (ms from now, or always). */
const DURATIONS: Record<string, number | 'forever'> = { '8h': 8 * HOUR, '1w': 7 * 24 * HOUR, always: 'forever' };
/** Mutes that end later than this (ms since the epoch, year 5138) are "always". */
const ALWAYS = 1e14;
/** The push choice last made (kept across renders, which rebuild the control). */
let pushChoice: 'silent' | 'off' = 'silent';

export function muted(c: Conversation): boolean {
  return (c.mutedUntil ?? 0) > Date.now();
}

/** What a muted chat's 🔇 says: until when, and what pushes. */
export function mutedLabel(c: Conversation): string {
  const until = c.mutedUntil ?? 0;
  const when = until > ALWAYS ? 'Muted always' : `Muted until ${new Date(until).toLocaleString([], { dateStyle: 'short', timeStyle: 'short' })}`;
  return `${when}${c.mutedPush === 'off' ? ', no push' : ', silent push'}`;
}

/** The next time (ms) one of these chats stops being muted, or 0 when none will. */
export function nextUnmute(chats: Iterable<Conversation>): number {
  let next = 0;
  for (const c of chats) {
    const until = c.mutedUntil ?? 0;
    if (until > Date.now() && until < ALWAYS && (!next || until < next)) next = until;
  }
  return next;
}

/**
 * The chat header's mute control: "Unmute" for a muted chat; otherwise a choice of
 * duration and of pushes, applied when a duration is chosen.
 */
export function muteControl(c: Conversation, act: (change: Parameters<App['updateChat']>[1]) => void): HTMLElement {
  if (muted(c)) {
    return h(
      'span',
      { class: 'mute' },
      h('span', { class: 'muted-until', 'data-testid': 'muted-until', 'data-push': c.mutedPush ?? 'silent' }, `🔇 ${mutedLabel(c)}`),
      h('button', { type: 'button', 'data-testid': 'unmute', onclick: () => act({ mutedUntil: 0 }) }, 'Unmute'),
    );
  }
  const push = h(
    'select',
    { 'data-testid': 'mute-push', 'aria-label': 'While muted', onchange: () => (pushChoice = push.value === 'off' ? 'off' : 'silent') },
    h('option', { value: 'silent', selected: pushChoice === 'silent' }, 'Silent push'),
    h('option', { value: 'off', selected: pushChoice === 'off' }, 'No push'),
  );
  const duration = h(
    'select',
    {
      'data-testid': 'mute',
      'aria-label': 'Mute',
      onchange: () => {
        const chosen = DURATIONS[duration.value];
        if (chosen === undefined) return;
        act({ mutedUntil: chosen === 'forever' ? 'forever' : Date.now() + chosen, mutedPush: pushChoice });
        pushChoice = 'silent';
      },
    },
    h('option', { value: '' }, 'Mute…'),
    h('option', { value: '8h' }, '8 hours'),
    h('option', { value: '1w' }, '1 week'),
    h('option', { value: 'always' }, 'Always'),
  );
  return h('span', { class: 'mute' }, duration, push);
}
