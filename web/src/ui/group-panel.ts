/**
 * A group's panel in the chat header: the members with "admin" badges; for admins,
 * promote / demote / remove and the invite link (create, copy, revoke); for every member,
 * add (the server refuses non-admins), rename the group and leave it (after a
 * confirmation). The server's refusals (NOT_ADMIN, INVALID_ARGUMENT...) show in the
 * panel. Also the side bar's "join with an invite link" form.
 */
import type { App } from '../app';
import type { Conversation } from '../state/chats';
import { Rejected } from '../net/socket';
import { h } from './dom';

/** A refusal as the user reads it: the server's code and reason. */
export function refusal(error: unknown): string {
  if (error instanceof Rejected) return `Refused: ${error.message}`;
  return String((error as Error)?.message ?? error);
}

/** Builds a group's panel from its current state; keeps what is open and typed across renders. */
export function groupPanel(app: App): (c: Conversation) => HTMLElement {
  const open = new Set<string>();
  const problems = new Map<string, string>();
  const addInput = h('input', { id: 'add-member', placeholder: 'User ids to add, comma-separated' });
  const subjectInput = h('input', { id: 'group-subject', placeholder: 'New subject', maxlength: 100 });

  /** Runs a group action; its refusal shows in the panel of that group. */
  function act(id: string, action: () => Promise<unknown>, done?: () => void): void {
    problems.delete(id);
    app.onChange();
    action().then(
      () => done?.(),
      (error: unknown) => {
        problems.set(id, refusal(error));
        app.onChange();
      },
    );
  }

  return (c) => {
    const id = c.id;
    const me = app.profile.userId;
    const admin = (user: string) => c.admins?.includes(user) ?? false;
    const iAmAdmin = admin(me);
    const token = app.groups.invites.get(id);
    const member = (user: string) =>
      h(
        'li',
        { 'data-member': user, 'data-admin': admin(user) ? true : undefined },
        h('span', {}, app.name(user), admin(user) ? h('span', { class: 'badge admin', 'data-testid': 'admin-badge' }, 'admin') : null),
        iAmAdmin
          ? h(
              'span',
              { class: 'member-actions' },
              admin(user)
                ? h('button', { type: 'button', 'data-testid': 'demote', onclick: () => act(id, () => app.groups.demote(id, user)) }, 'Demote')
                : h('button', { type: 'button', 'data-testid': 'promote', onclick: () => act(id, () => app.groups.promote(id, user)) }, 'Make admin'),
              user === me ? null : h('button', { type: 'button', class: 'danger', 'data-testid': 'remove-member', onclick: () => act(id, () => app.groups.remove(id, user)) }, 'Remove'),
            )
          : null,
      );
    const invite = iAmAdmin
      ? h(
          'div',
          { class: 'invite', 'data-testid': 'invite' },
          token && c.inviteActive !== false ? h('input', { readonly: true, 'data-testid': 'invite-link', value: app.groups.link(token), onfocus: (e: Event) => (e.target as HTMLInputElement).select() }) : null,
          h('button', { type: 'button', 'data-testid': 'create-invite', onclick: () => act(id, () => app.groups.createInvite(id)) }, c.inviteActive ? 'New invite link' : 'Create invite link'),
          c.inviteActive ? h('button', { type: 'button', class: 'danger', 'data-testid': 'revoke-invite', onclick: () => act(id, () => app.groups.revokeInvite(id)) }, 'Revoke link') : null,
        )
      : null;
    const panel = h(
      'details',
      { class: 'members', 'data-testid': 'group-members', open: open.has(id) ? true : undefined },
      // Kept open across renders: noted at the click (the toggle event comes a task later).
      h('summary', { 'data-testid': 'members-toggle', onclick: () => (open.has(id) ? open.delete(id) : open.add(id)) }, 'Group'),
      h(
        'div',
        { class: 'member-panel' },
        h(
          'form',
          {
            onsubmit: (event: Event) => {
              event.preventDefault();
              act(id, () => app.groups.setSubject(id, subjectInput.value), () => (subjectInput.value = ''));
            },
          },
          subjectInput,
          h('button', { type: 'submit', 'data-testid': 'set-subject' }, 'Rename'),
        ),
        h('ul', {}, ...(c.members ?? []).map(member)),
        h(
          'form',
          {
            onsubmit: (event: Event) => {
              event.preventDefault();
              const users = addInput.value.split(',').map((x) => x.trim()).filter(Boolean);
              act(id, () => app.groups.add(id, users), () => (addInput.value = ''));
            },
          },
          addInput,
          h('button', { type: 'submit', 'data-testid': 'add-members' }, 'Add'),
        ),
        invite,
        h(
          'button',
          {
            type: 'button',
            class: 'danger',
            'data-testid': 'leave-group',
            onclick: () => confirm(`Leave “${app.title(c)}”? You will no longer get its messages.`) && act(id, () => app.groups.leave(id)),
          },
          'Leave group',
        ),
        h('p', { class: 'problem', role: 'alert', 'data-testid': 'group-problem' }, problems.get(id) ?? ''),
      ),
    );
    panel.addEventListener('toggle', () => ((panel as HTMLDetailsElement).open ? open.add(id) : open.delete(id)));
    return panel;
  };
}

/** The side bar's form: join a group by pasting its invite link (or token). */
export function joinForm(app: App, fail: (error: unknown) => void): HTMLElement {
  const input = h('input', { id: 'join-link', placeholder: 'Invite link or token', autocomplete: 'off' });
  // Opened from an invite link (/app/#join=<token>): the form is filled in, for the user to confirm.
  const fromLink = () => {
    if (/^#join=[0-9a-f]{32}$/i.test(location.hash)) input.value = location.href;
  };
  fromLink();
  window.addEventListener('hashchange', fromLink);
  return h(
    'form',
    {
      class: 'join-group',
      onsubmit: (event: Event) => {
        event.preventDefault();
        if (!input.value.trim()) return;
        app.groups.join(input.value).then(() => {
          input.value = '';
          if (location.hash) history.replaceState(null, '', location.pathname);
        }, (error: unknown) => fail(refusal(error)));
      },
    },
    input,
    h('button', { id: 'join-group', type: 'submit' }, 'Join group'),
  );
}
