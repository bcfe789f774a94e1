/**
 * The signed-in screen: the user's own name, the conversation list (from the server: names,
 * group subjects, unread counts, pinned first; new chat, new group) and the open
 * conversation (messages with ✓ / ✓✓ / blue ✓✓, senders' names in groups, older messages
 * loaded when scrolled to the top, typing, presence, the composer, disabled once the user
 * left a group), with the chat actions (pin, mute (`mute.ts`), archive into an "Archived"
 * section, clear; a group's panel, `group-panel.ts`), and per message reactions, edit and
 * delete for everyone; the "Enable notifications" banner and the join-by-invite form.
 * Re-rendered from the app's state on every change.
 */
import type { App } from '../app';
import { shown } from '../state/chats';
import type { ChatMessage, Conversation, Shown } from '../state/chats';
import { h, replace } from './dom';
import { groupPanel, joinForm, refusal } from './group-panel';
import { muteControl, muted, mutedLabel, nextUnmute } from './mute';

/** The quick reactions offered under a message. */
const REACTIONS = ['👍', '❤️', '😂'];

const TICKS: Record<ChatMessage['status'], string> = { pending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓' };

function time(ms: number): string {
  return ms ? new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
}

/** Mounts the main screen; returns its render function. */
export function mainView(root: HTMLElement, app: App): () => void {
  const me = h('div', { class: 'me', 'data-testid': 'me', 'data-user-id': app.profile.userId }, `Me: ${app.profile.phone}`);
  const link = h('span', { class: 'link', 'data-testid': 'link' });
  const nameInput = h('input', { id: 'my-name', placeholder: 'Your name', maxlength: 25, autocomplete: 'off' });
  const nameForm = h('form', { class: 'my-name', onsubmit: saveName }, nameInput, h('button', { id: 'save-name', type: 'submit' }, 'Save name'));
  const peerInput = h('input', { id: 'new-chat-user', placeholder: 'User id to chat with' });
  const groupSubject = h('input', { id: 'new-group-subject', placeholder: 'Group subject' });
  const groupMembers = h('input', { id: 'new-group-members', placeholder: 'Member user ids, comma-separated' });
  const list = h('ul', { class: 'conversations', 'data-testid': 'conversations' });
  const header = h('header', { class: 'chat-header' });
  const messages = h('ol', { class: 'messages', 'data-testid': 'messages' });
  const composer = h('input', { id: 'composer', placeholder: 'Message', autocomplete: 'off' });
  const attach = h('input', { id: 'attach', type: 'file', 'aria-label': 'Attach a file' });
  const form = h('form', { class: 'composer' }, h('label', { class: 'attach', title: 'Attach a file' }, 'Attach', attach), composer, h('button', { id: 'send', type: 'submit' }, 'Send'));
  const viewer = h('div', { class: 'viewer', hidden: true, 'data-testid': 'viewer', onclick: () => (viewer.hidden = true) });
  const chat = h('section', { class: 'chat', 'data-testid': 'chat' }, header, messages, form);
  const problem = h('p', { class: 'status', role: 'status' });
  // Permission is asked from this button only (a user gesture), never on load.
  const notifyBanner = h(
    'div',
    { class: 'banner', 'data-testid': 'notifications-banner', hidden: true },
    'Get notified of new messages while this tab is in the background.',
    h('button', { type: 'button', 'data-testid': 'enable-notifications', onclick: () => app.notifier.enable().then(() => app.onChange(), fail) }, 'Enable notifications'),
  );
  const side = h(
    'aside',
    { class: 'side' },
    h('div', { class: 'side-head' }, me, link),
    nameForm,
    h('form', { class: 'new-chat', onsubmit: newChat }, peerInput, h('button', { id: 'start-chat', type: 'submit' }, 'Chat')),
    h('form', { class: 'new-group', onsubmit: newGroup }, groupSubject, groupMembers, h('button', { id: 'create-group', type: 'submit' }, 'New group')),
    joinForm(app, fail),
    notifyBanner,
    problem,
    list,
  );
  replace(root, h('div', { class: 'layout' }, side, chat), viewer);

  function fail(error: unknown): void {
    problem.textContent = String((error as Error).message ?? error);
  }
  function saveName(event: Event): void {
    event.preventDefault();
    const name = nameInput.value.trim();
    if (name) app.setMyName(name).then(() => (nameInput.value = ''), fail);
  }
  // Older messages when scrolled to the top.
  messages.addEventListener('scroll', () => {
    if (messages.scrollTop < 80 && app.open) void app.loadOlder(app.open);
  });
  function newChat(event: Event): void {
    event.preventDefault();
    app.openDirect(peerInput.value.trim()).then(() => (peerInput.value = ''), fail);
  }
  function newGroup(event: Event): void {
    event.preventDefault();
    const members = groupMembers.value.split(',').map((s) => s.trim()).filter(Boolean);
    app.createGroup(groupSubject.value.trim(), members).then(() => ((groupSubject.value = ''), (groupMembers.value = '')), fail);
  }
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = composer.value;
    composer.value = '';
    app.sendText(text).catch(fail);
  });
  composer.addEventListener('input', () => app.typingNow());
  attach.addEventListener('change', () => {
    const file = attach.files?.[0];
    attach.value = '';
    if (file) app.sendFile(file).catch(fail);
  });
  const thumbs = new Map<string, string>();
  function thumb(m: ChatMessage): string | null {
    if (!m.media?.thumbnail.length) return null;
    let url = thumbs.get(m.media.id);
    if (!url) {
      url = URL.createObjectURL(new Blob([m.media.thumbnail as BlobPart], { type: 'image/jpeg' }));
      thumbs.set(m.media.id, url);
    }
    return url;
  }
  function openMedia(m: ChatMessage): void {
    const media = m.media;
    if (!media) return;
    app.openMedia(media).then((url) => {
      const shown = media.mime.startsWith('image/')
        ? h('img', { src: url, alt: media.name, 'data-testid': 'viewer-image', 'data-name': media.name })
        : h('a', { href: url, download: media.name, 'data-testid': 'viewer-file' }, `Save ${media.name}`);
      replace(viewer, h('figure', {}, shown, h('figcaption', {}, `${media.name} · ${media.size} bytes`)));
      viewer.hidden = false;
    }, fail);
  }

  /** A chat action (UpdateChat); a refusal (such as a fourth pin) shows in the status line. */
  function chatAction(id: string, change: Parameters<App['updateChat']>[1]): void {
    problem.textContent = '';
    app.updateChat(id, change).catch((error: unknown) => fail(refusal(error)));
  }
  // A mute that ends drops its 🔇 then (the list re-renders at the next end).
  let unmuteTimer: ReturnType<typeof setTimeout> | null = null;
  let unmuteAt = 0;
  function scheduleUnmute(): void {
    const next = nextUnmute(app.chats.conversations.values());
    if (next === unmuteAt) return;
    if (unmuteTimer) clearTimeout(unmuteTimer);
    unmuteAt = next;
    unmuteTimer = next ? setTimeout(() => ((unmuteAt = 0), app.onChange()), Math.min(next - Date.now() + 50, 2 ** 31 - 1)) : null;
  }

  function row(c: Conversation): HTMLElement {
    return h(
      'li',
      {
        class: c.id === app.open ? 'conversation open' : 'conversation',
        'data-conversation': c.id,
        'data-unread': c.unread,
        'data-pinned': c.pinned ? true : undefined,
        'data-archived': c.archived ? true : undefined,
        'data-muted': muted(c) ? true : undefined,
        'data-muted-push': muted(c) ? (c.mutedPush ?? 'silent') : undefined,
        onclick: () => void app.select(c.id),
      },
      h(
        'span',
        { class: 'title' },
        c.kind === 'group' ? h('span', { class: 'badge' }, 'group') : null,
        c.pinned ? h('span', { class: 'badge', 'data-testid': 'pinned' }, '📌 pinned') : null,
        muted(c) ? h('span', { class: 'badge', 'data-testid': 'muted', title: mutedLabel(c) }, '🔇') : null,
        app.title(c),
      ),
      h('span', { class: 'last' }, c.lastText),
      c.unread ? h('span', { class: 'unread', 'data-testid': 'unread' }, `${c.unread}${c.unreadMore ? '+' : ''}`) : null,
    );
  }

  function edit(s: Shown): void {
    const text = prompt('Edit message', s.text);
    if (text !== null && text.trim() && text !== s.text) app.editMessage(s.message.seq, text).catch(fail);
  }
  function remove(m: ChatMessage): void {
    if (confirm('Delete this message for everyone?')) app.deleteForEveryone(m.seq).catch(fail);
  }

  function bubble(s: Shown, group: boolean, member: boolean): HTMLElement {
    const m = s.message;
    if (m.system) return h('li', { class: 'system', 'data-seq': m.seq }, m.text);
    // Actions on a sent, readable message that is still there.
    const live = member && m.seq > 0 && !m.deleted && !m.problem;
    const reactions = [...s.reactions.entries()];
    return h(
      'li',
      { class: m.mine ? 'message mine' : 'message', 'data-seq': m.seq, 'data-status': m.mine ? m.status : undefined, 'data-problem': m.problem, 'data-deleted': m.deleted ? true : undefined },
      group && !m.mine ? h('span', { class: 'sender', 'data-testid': 'sender' }, app.name(m.sender)) : null,
      m.media && !m.deleted ? h('button', { class: 'media', type: 'button', 'data-testid': 'open-media', 'data-name': m.media.name, onclick: () => openMedia(m) }, thumb(m) ? h('img', { src: thumb(m), alt: 'preview' }) : h('span', { class: 'badge' }, 'file')) : null,
      h('span', { class: 'text' }, s.text),
      h(
        'span',
        { class: 'meta' },
        s.edited ? h('span', { class: 'edited', 'data-testid': 'edited' }, 'edited ') : null,
        time(m.time),
        m.mine ? h('span', { class: `tick ${m.status}`, 'data-testid': 'tick' }, TICKS[m.status]) : null,
      ),
      reactions.length
        ? h('span', { class: 'reactions', 'data-testid': 'reactions' }, ...reactions.map(([emoji, n]) => h('span', { class: emoji === s.mine ? 'reaction mine' : 'reaction', 'data-emoji': emoji }, n > 1 ? `${emoji} ${n}` : emoji)))
        : null,
      live
        ? h(
            'span',
            { class: 'actions' },
            ...REACTIONS.map((emoji) =>
              h('button', { type: 'button', 'data-testid': 'react', 'data-emoji': emoji, title: s.mine === emoji ? 'Remove reaction' : `React ${emoji}`, onclick: () => app.react(m.seq, s.mine === emoji ? '' : emoji).catch(fail) }, emoji),
            ),
            m.mine && !m.media ? h('button', { type: 'button', 'data-testid': 'edit', title: 'Edit', onclick: () => edit(s) }, '✏️') : null,
            m.mine ? h('button', { type: 'button', 'data-testid': 'delete', title: 'Delete for everyone', onclick: () => remove(m) }, '🗑') : null,
          )
        : null,
    );
  }

  const panel = groupPanel(app);

  function subtitle(c: Conversation): string {
    const typing = [...(app.typing.get(c.id)?.entries() ?? [])].filter(([, until]) => until > Date.now());
    if (typing.length) return 'typing…';
    if (c.kind === 'group') return c.member === false ? 'You are no longer a member' : `${c.members?.length ?? '?'} members`;
    const p = c.peer ? app.presence.get(c.peer) : undefined;
    if (!p) return '';
    if (p.online) return 'online';
    return p.lastSeen ? `last seen ${new Date(p.lastSeen).toLocaleString()}` : '';
  }

  return () => {
    me.textContent = `Me: ${app.myName ? `${app.myName} (${app.profile.phone})` : app.profile.phone}`;
    link.textContent = app.link === 'online' ? (app.caughtUp ? 'online' : 'syncing…') : app.link;
    link.dataset.state = app.link;
    notifyBanner.hidden = app.notifier.permission() !== 'default';
    scheduleUnmute();
    // Pinned first, then the rest; archived ones in their own section at the end.
    const all = app.chats.sorted();
    const archived = all.filter((c) => c.archived);
    replace(
      list,
      ...all.filter((c) => !c.archived).map(row),
      archived.length ? h('li', { class: 'section', 'data-testid': 'archived' }, `Archived (${archived.length})`) : null,
      ...archived.map(row),
    );
    const c = app.open ? app.chats.conversations.get(app.open) : undefined;
    chat.hidden = !c;
    if (!c) return;
    const id = c.id;
    replace(
      header,
      h('h2', { 'data-testid': 'chat-title' }, app.title(c)),
      h('span', { class: 'subtitle', 'data-testid': 'subtitle' }, subtitle(c)),
      h('span', { class: 'id' }, c.id),
      h(
        'span',
        { class: 'chat-actions' },
        h('button', { type: 'button', 'data-testid': 'pin', onclick: () => chatAction(id, { pinned: !c.pinned }) }, c.pinned ? 'Unpin' : 'Pin'),
        muteControl(c, (change) => chatAction(id, change)),
        h('button', { type: 'button', 'data-testid': 'archive', onclick: () => chatAction(id, { archived: !c.archived }) }, c.archived ? 'Unarchive' : 'Archive'),
        h('button', { type: 'button', 'data-testid': 'clear', onclick: () => confirm('Clear this chat’s messages on your devices?') && chatAction(id, { clear: true }) }, 'Clear'),
      ),
    );
    // A group's panel (members, admins, subject, invite, leave) while the user is a member.
    if (c.kind === 'group' && c.member !== false) header.append(panel(c));
    // A group the user left or was removed from: read-only.
    const gone = c.kind === 'group' && c.member === false;
    for (const input of [composer, attach, form.querySelector('#send') as HTMLButtonElement]) input.disabled = gone;
    composer.placeholder = gone ? 'You are no longer a member of this group' : 'Message';
    // Stay at the bottom when there; otherwise keep the view where it was (older messages
    // added above do not move it). Another conversation opens at its bottom.
    const fromBottom = messages.scrollHeight - messages.scrollTop;
    const atBottom = fromBottom - messages.clientHeight < 40;
    const same = messages.dataset.conversation === c.id;
    const loading = app.loadingOlder.has(c.id);
    replace(messages, c.hasMore === false ? null : h('li', { class: 'system older', 'data-testid': 'older' }, loading ? 'Loading older messages…' : 'Scroll up for older messages'), ...shown(app.chats.list(c.id)).map((s) => bubble(s, c.kind === 'group', c.member !== false)));
    messages.scrollTop = atBottom || !same ? messages.scrollHeight : messages.scrollHeight - fromBottom;
    messages.dataset.conversation = c.id;
    messages.dataset.hasMore = String(c.hasMore !== false);
    // Nothing to scroll yet: load older messages at once.
    if (messages.scrollHeight <= messages.clientHeight && c.hasMore !== false && !loading) void app.loadOlder(c.id);
  };
}
