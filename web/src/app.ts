/**
 * The signed-in client: one socket, the E2EE device, the chats; turns server frames into
 * state (decrypting, acknowledging, receipts, typing, presence) and user actions into
 * encrypted sends. The views (`ui/`) render from it and call its actions.
 */
import type { InboxEntry, Message } from './gen/switchboard_pb';
import { ErrorCode, MessageKind, MutedPush, ReceiptKind } from './gen/switchboard_pb';
import { E2ee } from './crypto/e2ee';
import { fetchProfile, setName } from './net/api';
import type { Profile } from './net/api';
import { Rejected, Socket } from './net/socket';
import type { LinkState, ServerKind } from './net/socket';
import { Chats, ahead, shown, ticks } from './state/chats';
import type { ChatMessage, Conversation, MediaRef } from './state/chats';
import * as db from './state/db';
import type { RoomPlaintext } from './gen/e2ee_pb';
import { MediaKeySchema } from './gen/e2ee_pb';
import { create } from '@bufbuild/protobuf';
import { open as openSealed, seal, thumbnail } from './media/attachment';
import { download, upload } from './net/media';
import { concat, randomId, uuidBytes, uuidText } from './util/bytes';
import { Groups, apply as applyGroupEvent, describe as describeEvent } from './groups';
import { Notifier, mediaLabel } from './notifications';

/** Lets a queued IndexedDB write finish on its own (a failure is reported, not thrown). */
function keep(write: Promise<void>): void {
  write.catch((error: unknown) => console.warn('IndexedDB write failed', error));
}

/** The namespace of 1:1 conversation ids (protocol §2). */
const DIRECT_NAMESPACE = uuidBytes('6c1f7a57-0b2e-4e8e-9a41-535742434844');

/** The id of the 1:1 conversation of two users: UUIDv5 over the two ids, lower first. */
async function directId(a: string, b: string): Promise<string> {
  const x = uuidBytes(a);
  const y = uuidBytes(b);
  let lower = x;
  let higher = y;
  for (let i = 0; i < 16; i++) {
    if (x[i] === y[i]) continue;
    if (x[i] > y[i]) [lower, higher] = [y, x];
    break;
  }
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-1', concat(DIRECT_NAMESPACE, lower, higher) as BufferSource));
  const id = digest.slice(0, 16);
  id[6] = (id[6] & 0x0f) | 0x50;
  id[8] = (id[8] & 0x3f) | 0x80;
  return uuidText(id);
}

/** The signed-in client. */
export class App {
  readonly chats = new Chats();
  /** Group actions (GroupChange, JoinGroup, GroupInfoRequest). */
  readonly groups = new Groups(this);
  /** Browser notifications while the user is away; a click opens the chat. */
  readonly notifier = new Notifier((id) => void this.select(id));
  socket!: Socket;
  e2ee!: E2ee;
  link: LinkState = 'connecting';
  caughtUp = false;
  open: string | null = null;
  /** Who is typing where (conversation → user → until). */
  typing = new Map<string, Map<string, number>>();
  presence = new Map<string, { online: boolean; lastSeen: number }>();
  /** Other users' profile names (user id → name; empty until they set one). */
  names = new Map<string, string>();
  /** This user's own profile name. */
  myName = '';
  /** Conversations whose older messages are being fetched. */
  readonly loadingOlder = new Set<string>();
  /** Messages waiting for their room key, by the session they need (`senderKey|sessionId`), and whether they came from history. */
  private waiting = new Map<string, Array<{ m: Message; history: boolean }>>();
  /** Acknowledgements to send once the messages are stored: conversation → its id and highest seq. */
  private acks = new Map<string, { conversationId: Uint8Array; seq: bigint }>();
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private askedNames = new Set<string>();
  /** Names to fetch, a few at a time. */
  private nameQueue: string[] = [];
  private nameFetches = 0;
  private namesDirty: ReturnType<typeof setTimeout> | null = null;
  private syncing: Promise<void> | null = null;
  private typingSent = 0;
  onChange: () => void = () => {};

  constructor(readonly profile: Profile) {}

  async start(): Promise<void> {
    await this.chats.load();
    // Names kept from earlier runs show at once; they are fetched again after catch-up.
    for (const [user, name] of Object.entries((await db.get<Record<string, string>>('names')) ?? {})) {
      this.names.set(user, name);
      this.askedNames.add(user);
    }
    fetchProfile(this.profile.token, this.profile.userId).then((p) => {
      this.myName = p.name;
      this.onChange();
    }, () => {});
    this.e2ee = await E2ee.open(this.profile.userId, this.profile.deviceId);
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;
    this.socket = new Socket(url, this.profile.token, {
      onFrame: (kind) => this.onFrame(kind),
      peek: (kind) => {
        if (kind.case === 'toDevice') this.e2ee.prefetch(this.socket, uuidText(kind.value.senderUserId));
      },
      onWelcome: () => this.onWelcome(),
      onState: (state) => {
        this.link = state;
        if (state !== 'online') this.caughtUp = false;
        this.onChange();
      },
      onFatal: (reason) => {
        this.link = 'offline';
        alert(`Signed out: ${reason}`);
      },
    });
    window.addEventListener('offline', () => this.socket.hold());
    window.addEventListener('online', () => this.socket.resume());
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && this.open) void this.markRead(this.open);
    });
    this.socket.start();
  }

  private async onWelcome(): Promise<void> {
    // Sends that never got their SendAck go again, byte for byte (idempotent by client id).
    for (const o of this.chats.outbox.values()) {
      void this.socket
        .send(o.clientMsgId, { case: 'send', value: { clientMsgId: o.clientMsgId, conversationId: uuidBytes(o.conversation), payload: o.payload, attachments: o.attachments ?? [], kind: o.kind ?? 0, referenceSeq: BigInt(o.referenceSeq ?? 0) } })
        .then((answer) => this.onSendAck(answer))
        .catch(() => {});
    }
    await this.e2ee.publish(this.socket);
  }

  private async onFrame(kind: ServerKind): Promise<void> {
    switch (kind.case) {
      case 'message':
        await this.onMessage(kind.value);
        break;
      case 'toDevice':
        await this.retryWaiting(await this.e2ee.onToDevice(this.socket, kind.value));
        break;
      case 'deviceListsChanged':
        await this.e2ee.onDeviceListsChanged(this.socket, kind.value.userIds);
        break;
      case 'keysLow':
        await this.e2ee.onKeysLow(this.socket, kind.value);
        break;
      case 'catchUpComplete':
        this.caughtUp = true;
        this.queryPresence([...this.chats.conversations.values()].flatMap((c) => (c.kind === 'direct' && c.peer ? [c.peer] : [])));
        void this.syncInbox();
        // Names may have changed while this device was away (ProfileChanged is not replayed).
        for (const user of this.names.keys()) {
          this.askedNames.delete(user);
          this.fetchName(user);
        }
        break;
      case 'inboxChanged':
        if (kind.value.entry) await this.applyEntry(kind.value.entry);
        break;
      case 'profileChanged': {
        const user = uuidText(kind.value.userId);
        this.askedNames.delete(user);
        this.fetchName(user);
        break;
      }
      case 'receipt': {
        const r = kind.value;
        const conversation = uuidText(r.conversationId);
        if (uuidText(r.userId) === this.profile.userId) {
          // Read on another device of this user: the conversation is read up to there here too.
          const c = this.chats.conversations.get(conversation);
          if (c && r.kind === ReceiptKind.READ && Number(r.upToSeq) > c.readSeq) {
            c.readSeq = Number(r.upToSeq);
            if (c.readSeq >= c.lastSeq) c.unread = 0;
            await this.chats.saveConversation(c);
          }
          break;
        }
        await this.chats.mark(conversation, Number(r.upToSeq), r.kind === ReceiptKind.READ ? 'read' : 'delivered');
        break;
      }
      case 'receiptSummary': {
        const s = kind.value;
        // `members` already counts the members other than the sender (protocol: M).
        const others = s.members;
        const conversation = uuidText(s.conversationId);
        if (others > 0 && s.read >= others) await this.chats.mark(conversation, Number(s.seq), 'read');
        else if (others > 0 && s.delivered >= others) await this.chats.mark(conversation, Number(s.seq), 'delivered');
        break;
      }
      case 'typing': {
        const t = kind.value;
        const conversation = uuidText(t.conversationId);
        const map = this.typing.get(conversation) ?? new Map<string, number>();
        if (t.active) map.set(uuidText(t.userId), Date.now() + 6000);
        else map.delete(uuidText(t.userId));
        this.typing.set(conversation, map);
        setTimeout(() => this.onChange(), 6100);
        break;
      }
      case 'presence': {
        const p = kind.value;
        this.presence.set(uuidText(p.userId), { online: p.online, lastSeen: Number(p.lastSeenMs) });
        break;
      }
      default:
        return;
    }
    this.onChange();
  }

  /**
   * Stores a message from catch-up, live delivery or (`history`) a `HistoryPage`: decrypted,
   * once per seq. History messages are not acknowledged, counted unread or notified, and
   * their events do not change the conversation's current state. `retry`: a message kept
   * undecrypted, now that its key came (acknowledged already). The writes are queued, not
   * awaited: a burst of messages is stored in one IndexedDB transaction, and acknowledged
   * once it is committed.
   */
  private async onMessage(m: Message, history = false, retry = false): Promise<void> {
    const conversation = uuidText(m.conversationId);
    const seq = Number(m.seq);
    const sender = uuidText(m.senderUserId);
    const mine = sender === this.profile.userId;
    // A message ends its sender's typing.
    if (!history) this.typing.get(conversation)?.delete(sender);
    const c = await this.chats.ensure(conversation, mine ? {} : { peer: sender, title: sender.slice(0, 8) });
    // Cleared on this user's devices: acknowledged, not kept.
    if (seq <= (c.clearedUpTo ?? 0)) {
      if (!history && !retry) this.ack(conversation, m);
      return;
    }
    // Acknowledge (✓✓ for the sender) even a repeat: its earlier ack may have been lost.
    if (!history && !retry) this.ack(conversation, m);
    const known = this.chats.has(conversation, seq);
    // The stored copy of an own message carries its ticks (history, catch-up).
    const status = mine ? ticks(m.deliveredTo, m.readBy, c.kind === 'group' ? (c.members?.length ?? 2) - 1 : 1) : 'read';
    const existing = known ? this.chats.get(conversation, seq) : undefined;
    if (existing && !existing.problem) {
      if (mine && ahead(status, existing.status)) {
        existing.status = status;
        keep(this.chats.put(existing));
      }
      return;
    }
    let text = '';
    let problem: string | undefined;
    let system = false;
    let media: MediaRef | undefined;
    if (m.event) {
      system = true;
      const e = m.event.kind;
      // An old event (history) is only shown: the conversation's state is newer than it.
      if (e.case === 'messageDeleted') {
        const target = this.chats.get(conversation, Number(e.value));
        if (target) {
          target.text = 'This message was deleted';
          target.problem = undefined;
          target.deleted = true;
          target.media = undefined;
          keep(this.chats.put(target));
          if (c.lastSeq === target.seq) c.lastText = target.text;
        }
      } else if (!history && applyGroupEvent(c, e, this.profile.userId)) void this.groups.info(conversation);
      text = describeEvent(e, (u) => this.name(u));
      if (!text) return this.afterMessage(c.id, seq, m, false, known);
    } else if (m.deleted) {
      text = 'This message was deleted';
    } else {
      // Edits and reactions: a text (the new text, or an emoji; empty removes the reaction), like a message.
      const opened = this.e2ee.decrypt(m);
      if (opened.ok) {
        const body = opened.plaintext.body;
        text = body.case === 'text' ? body.value : body.case === 'media' ? body.value.name : '(unsupported content)';
        if (body.case === 'media') {
          const k = body.value;
          media = { id: uuidText(k.mediaId), key: k.key, sha256: k.sha256, size: Number(k.size), name: k.name, mime: k.mime, thumbnail: k.thumbnail };
        }
      } else {
        problem = opened.reason;
        text = opened.retryable ? 'Waiting for this message’s key…' : `Cannot decrypt: ${opened.reason}`;
        if (opened.retryable && opened.session) {
          const list = this.waiting.get(opened.session) ?? [];
          list.push({ m, history });
          this.waiting.set(opened.session, list);
        }
      }
    }
    const message: ChatMessage = { conversation, seq, clientMsgId: m.clientMsgId, sender, mine, text, time: Number(m.serverTimeMs), status, problem, system, media };
    if (m.deleted) message.deleted = true;
    const ref = m.kind === MessageKind.EDIT ? 'edit' : m.kind === MessageKind.REACTION ? 'reaction' : undefined;
    if (ref && !system) {
      message.kind = ref;
      message.ref = Number(m.referenceSeq);
      keep(this.chats.put(message));
      // Not a message of its own: no unread count, the list's text stays (an edit of the last one shows).
      const target = this.chats.get(conversation, message.ref);
      if (ref === 'edit' && target && target.seq === c.lastSeq && target.sender === sender && !problem) c.lastText = text;
      // A reaction to one of this user's messages is notified (not its removal, not an edit).
      if (ref === 'reaction' && text && !problem && !mine && !history && !known && target?.mine) {
        const current = shown(this.chats.list(conversation)).find((s) => s.message.seq === target.seq)?.text ?? target.text;
        this.notify(c, sender, `Reacted ${text} to “${current}”`);
      }
      return this.afterMessage(c.id, seq, m, false, known);
    }
    keep(this.chats.put(message));
    const notice = media ? mediaLabel(media.mime) : problem ? 'New message' : text;
    await this.afterMessage(c.id, seq, m, !mine && !system && !history, known, text, notice);
  }

  /** List bookkeeping of a stored message; `known` when it was stored before (a retried decryption). */
  private async afterMessage(conversation: string, seq: number, m: Message, incoming: boolean, known: boolean, text?: string, notice?: string): Promise<void> {
    const c = await this.chats.ensure(conversation);
    if (seq >= c.lastSeq) {
      c.lastSeq = seq;
      if (text) c.lastText = text;
      c.updated = Number(m.serverTimeMs) || Date.now();
    }
    if (incoming && !known && seq > c.readSeq) {
      if (this.open === conversation && !document.hidden) {
        c.readSeq = seq;
        this.socket.write({ case: 'read', value: { conversationId: m.conversationId, seq: m.seq } });
      } else {
        c.unread++;
        this.notify(c, uuidText(m.senderUserId), notice ?? text ?? '');
      }
    }
    keep(this.chats.saveConversation(c));
  }

  /**
   * Acknowledges a message (cumulative per conversation): one Ack per conversation per
   * burst, sent once the messages are stored.
   */
  private ack(conversation: string, m: Message): void {
    const held = this.acks.get(conversation);
    if (!held || m.seq > held.seq) this.acks.set(conversation, { conversationId: m.conversationId, seq: m.seq });
    this.scheduleAcks();
  }

  private scheduleAcks(): void {
    this.ackTimer ??= setTimeout(() => {
      const acks = [...this.acks.values()];
      this.acks.clear();
      db.settled()
        .then(() => {
          for (const a of acks) this.socket.write({ case: 'ack', value: a });
        })
        .catch((error: unknown) => console.warn('messages not stored: not acknowledged', error))
        .finally(() => {
          this.ackTimer = null;
          if (this.acks.size) this.scheduleAcks();
        });
    }, 50);
  }

  /** A browser notification of another user's message or reaction, unless the chat is muted (shown only while the user is away). */
  private notify(c: Conversation, sender: string, body: string): void {
    if ((c.mutedUntil ?? 0) > Date.now()) return;
    const title = c.kind === 'group' ? `${this.name(sender)} @ ${this.title(c)}` : this.name(sender);
    this.notifier.show(c.id, title, body);
  }

  /** Decrypts again the messages that waited for these sessions (and only those). */
  private async retryWaiting(sessions: string[]): Promise<void> {
    for (const session of sessions) {
      const waiting = this.waiting.get(session);
      if (!waiting) continue;
      this.waiting.delete(session);
      for (const w of waiting) await this.onMessage(w.m, w.history, true);
    }
  }

  /**
   * Syncs the conversation list: `InboxRequest` pages from the version of the last
   * complete sync (kept in IndexedDB), each entry applied; the new version is kept once
   * the last page is read.
   */
  syncInbox(): Promise<void> {
    this.syncing ??= (async () => {
      try {
        const since = (await db.get<number>('inbox-version')) ?? 0;
        let after = '';
        let version = 0n;
        do {
          const answer = await this.socket.request((requestId) => ({ case: 'inbox', value: { requestId, sinceVersion: BigInt(since), after, limit: 100 } }));
          if (answer.case !== 'inbox') return;
          for (const e of answer.value.entries) await this.applyEntry(e);
          version = answer.value.version;
          after = answer.value.next;
          this.onChange();
        } while (after);
        await db.put('inbox-version', Number(version));
        await this.resolvePeers();
      } catch (error) {
        console.warn('inbox sync failed', error);
      } finally {
        this.syncing = null;
        this.onChange();
      }
    })();
    return this.syncing;
  }

  /** One conversation's entry of the list (from a sync or `InboxChanged`): the server's state of it. */
  private async applyEntry(e: InboxEntry): Promise<void> {
    const id = uuidText(e.conversationId);
    const isNew = !this.chats.conversations.has(id);
    const c = await this.chats.ensure(id, { kind: e.group ? 'group' : 'direct', title: e.group ? e.subject : id.slice(0, 8) });
    c.kind = e.group ? 'group' : 'direct';
    if (e.group) {
      if (e.subject) c.title = e.subject;
      c.peer = undefined;
    }
    if (!e.group && e.peerUserId.length === 16) c.peer = uuidText(e.peerUserId);
    c.member = e.member;
    c.archived = e.archived;
    c.mutedUntil = Number(e.mutedUntilMs);
    c.mutedPush = e.mutedPush === MutedPush.OFF ? 'off' : 'silent';
    const cleared = Number(e.clearedUpTo);
    if (cleared > (c.clearedUpTo ?? 0)) {
      c.clearedUpTo = cleared;
      await this.chats.clear(id, cleared);
      if (cleared >= c.lastSeq) {
        c.lastText = '';
        c.hasMore = false;
      }
    }
    c.pinned = Number(e.pinnedMs);
    const lastTime = Number(e.lastTimeMs);
    if (lastTime) c.updated = isNew ? lastTime : Math.max(c.updated, lastTime);
    c.readSeq = Math.max(c.readSeq, Number(e.readSeq));
    c.unread = e.unreadCount;
    c.unreadMore = e.unreadMore;
    const last = e.lastMessage;
    if (last) {
      const seq = Number(last.seq);
      const held = this.chats.get(id, seq);
      if (seq <= (c.clearedUpTo ?? 0)) c.lastText = '';
      else if (held && !held.system && !held.kind) c.lastText = held.deleted ? 'This message was deleted' : held.text;
      else if (!c.lastText || seq > c.lastSeq) c.lastText = last.deleted ? 'This message was deleted' : last.event ? '' : 'Message';
      const sender = uuidText(last.senderUserId);
      if (!e.group && !c.peer && sender !== this.profile.userId) c.peer = sender;
    }
    c.lastSeq = Math.max(c.lastSeq, Number(e.lastSeq));
    keep(this.chats.saveConversation(c));
    if (e.group && e.member && (!c.members || !c.admins)) void this.groups.info(id);
    if (this.open === id && !document.hidden && c.unread) await this.markRead(id);
    this.onChange();
  }

  /**
   * Finds the other user of each 1:1 whose peer is not known yet (a conversation nobody
   * wrote in, on a device that has no message of it): the users this device knows whose
   * direct id with this user is the conversation's.
   */
  async resolvePeers(): Promise<void> {
    const open = [...this.chats.conversations.values()].filter((c) => c.kind === 'direct' && !c.peer);
    if (!open.length || !crypto.subtle) return;
    const known = new Set<string>([this.profile.userId, ...this.names.keys()]);
    for (const c of this.chats.conversations.values()) {
      if (c.peer) known.add(c.peer);
      for (const m of c.members ?? []) known.add(m);
    }
    const byId = new Map<string, string>();
    for (const user of known) byId.set(await directId(this.profile.userId, user), user);
    for (const c of open) {
      const peer = byId.get(c.id);
      if (!peer) continue;
      c.peer = peer;
      await this.chats.saveConversation(c);
      this.queryPresence(peer);
    }
    this.onChange();
  }

  /**
   * Loads the page of messages before the oldest one shown (`HistoryRequest`), decrypted
   * and stored in order, each once; no-op while one is loading or when there is none.
   */
  async loadOlder(id: string): Promise<void> {
    const c = this.chats.conversations.get(id);
    if (!c || c.hasMore === false || this.loadingOlder.has(id) || !this.caughtUp) return;
    const before = this.chats.oldest(id);
    // Only sends not yet acknowledged: wait for their seqs rather than ask from the newest.
    if (before === 0 && this.chats.list(id).length) return;
    if (before === 1 || (before && before - 1 <= (c.clearedUpTo ?? 0))) {
      c.hasMore = false;
      await this.chats.saveConversation(c);
      return;
    }
    this.loadingOlder.add(id);
    this.onChange();
    try {
      const answer = await this.socket.request((requestId) => ({ case: 'history', value: { requestId, conversationId: uuidBytes(id), beforeSeq: BigInt(before), limit: 30 } }));
      if (answer.case !== 'history') return;
      for (const m of answer.value.messages) await this.onMessage(m, true);
      c.hasMore = answer.value.hasMore && answer.value.messages.length > 0;
      await this.chats.saveConversation(c);
    } finally {
      this.loadingOlder.delete(id);
      this.onChange();
    }
  }

  /** Another user's display name: their profile name once fetched, else the start of their id. */
  name(user: string): string {
    if (user === this.profile.userId) return this.myName || 'You';
    this.fetchName(user);
    return this.names.get(user) || user.slice(0, 8);
  }

  /** The title a conversation shows: the group subject, or the other user's name. */
  title(c: Conversation): string {
    if (c.kind === 'group') return c.title;
    return c.peer ? this.name(c.peer) : c.title;
  }

  /** Fetches a user's profile name (at most 4 requests at a time); the list re-renders when it comes. */
  private fetchName(user: string): void {
    if (this.askedNames.has(user)) return;
    this.askedNames.add(user);
    this.nameQueue.push(user);
    this.pumpNames();
  }

  private pumpNames(): void {
    while (this.nameFetches < 4 && this.nameQueue.length) {
      const user = this.nameQueue.shift() as string;
      this.nameFetches++;
      fetchProfile(this.profile.token, user)
        .then(
          (p) => {
            if (user === this.profile.userId) this.myName = p.name;
            else if (this.names.get(user) !== p.name) {
              this.names.set(user, p.name);
              this.saveNames();
            }
            this.onChange();
          },
          () => this.askedNames.delete(user),
        )
        .finally(() => {
          this.nameFetches--;
          this.pumpNames();
        });
    }
  }

  /** Keeps the names in IndexedDB (one write for a burst of answers). */
  private saveNames(): void {
    if (this.namesDirty) return;
    this.namesDirty = setTimeout(() => {
      this.namesDirty = null;
      void db.put('names', Object.fromEntries(this.names));
    }, 500);
  }

  /** Sets this user's profile name (shown to the people they chat with). */
  async setMyName(name: string): Promise<void> {
    const p = await setName(this.profile.token, name);
    this.myName = p.name;
    this.onChange();
  }

  /**
   * Asks for users' presence, 256 per query: the first answer resolves the request, the
   * others (one `Presence` per user, same request id) come as frames.
   */
  private queryPresence(users: string | string[]): void {
    const list = typeof users === 'string' ? [users] : users;
    for (let i = 0; i < list.length; i += 256) {
      this.socket
        .request((requestId) => ({ case: 'presenceQuery', value: { requestId, userIds: list.slice(i, i + 256).map(uuidBytes) } }))
        .then((answer) => {
          if (answer.case === 'presence') {
            this.presence.set(uuidText(answer.value.userId), { online: answer.value.online, lastSeen: Number(answer.value.lastSeenMs) });
            this.onChange();
          }
        })
        .catch(() => {});
    }
  }

  /** Opens (creating if needed) the 1:1 with a user. */
  async openDirect(peer: string): Promise<void> {
    const answer = await this.socket.request((requestId) => ({ case: 'openDirect', value: { requestId, peerUserId: uuidBytes(peer) } }));
    if (answer.case !== 'directOpened') return;
    const id = uuidText(answer.value.conversationId);
    const c = await this.chats.ensure(id, { kind: 'direct', peer, title: peer.slice(0, 8) });
    if (!c.peer) {
      c.peer = peer;
      await this.chats.saveConversation(c);
    }
    this.queryPresence(peer);
    await this.select(id);
  }

  /** Creates a group with these members. */
  async createGroup(subject: string, members: string[]): Promise<void> {
    const answer = await this.socket.request((requestId) => ({ case: 'createGroup', value: { requestId, subject, memberUserIds: members.map(uuidBytes) } }));
    if (answer.case !== 'groupAnswer') return;
    const id = uuidText(answer.value.conversationId);
    await this.chats.ensure(id, { kind: 'group', title: subject, members: [this.profile.userId, ...members] });
    await this.select(id);
  }

  /** Shows a conversation and marks it read. */
  async select(id: string): Promise<void> {
    this.open = id;
    this.notifier.dismiss(id);
    await this.markRead(id);
    this.onChange();
  }

  private async markRead(id: string): Promise<void> {
    const c = this.chats.conversations.get(id);
    if (!c) return;
    if (c.lastSeq > c.readSeq || c.unread) {
      c.readSeq = c.lastSeq;
      c.unread = 0;
      await this.chats.saveConversation(c);
      this.socket.write({ case: 'read', value: { conversationId: uuidBytes(id), seq: BigInt(c.lastSeq) } });
      this.onChange();
    }
  }

  private async members(id: string): Promise<string[]> {
    const c = this.chats.conversations.get(id);
    if (c?.kind === 'direct' && c.peer) return [this.profile.userId, c.peer];
    // A 1:1 from the list whose other user this device cannot tell yet (nobody wrote in it).
    if (c?.kind === 'direct') throw new Error('This chat’s other person is not known on this device yet: start it again with their user id');
    const answer = await this.socket.request((requestId) => ({ case: 'groupInfo', value: { requestId, conversationId: uuidBytes(id) } }));
    if (answer.case !== 'groupInfo') throw new Error('no group info');
    return answer.value.memberUserIds.map(uuidText);
  }

  /** Encrypts and sends a text; ✓ on its SendAck. */
  async sendText(text: string): Promise<void> {
    if (!text.trim()) return;
    await this.sendBody({ case: 'text', value: text }, text);
  }

  /** Encrypts a file with a fresh key, uploads it, and sends its key in an encrypted message. */
  async sendFile(file: File): Promise<void> {
    const plain = new Uint8Array(await file.arrayBuffer());
    const sealed = await seal(plain);
    const id = await upload(this.profile.token, sealed.bytes, sealed.sha256);
    const mime = file.type || 'application/octet-stream';
    const media: MediaRef = { id, key: sealed.key, sha256: sealed.sha256, size: plain.length, name: file.name, mime, thumbnail: await thumbnail(file) };
    const key = create(MediaKeySchema, { mediaId: uuidBytes(id), key: media.key, sha256: media.sha256, size: BigInt(media.size), name: media.name, mime, thumbnail: media.thumbnail });
    await this.sendBody({ case: 'media', value: key }, file.name, media);
  }

  /** Downloads, checks and decrypts an attachment: a blob URL of the file. */
  async openMedia(media: MediaRef): Promise<string> {
    const bytes = await download(this.profile.token, media.id);
    const plain = await openSealed(media.key, media.sha256, bytes);
    return URL.createObjectURL(new Blob([plain as BlobPart], { type: media.mime }));
  }

  private async sendBody(body: RoomPlaintext['body'], text: string, media?: MediaRef, ref?: { kind: 'edit' | 'reaction'; seq: number }): Promise<void> {
    const id = this.open;
    if (!id) return;
    const clientMsgId = randomId();
    // Typing ends with the send; the next keystroke starts it again at once.
    if (this.typingSent) this.socket.write({ case: 'typing', value: { conversationId: uuidBytes(id), active: false } });
    this.typingSent = 0;
    const pending: ChatMessage = { conversation: id, seq: 0, clientMsgId, sender: this.profile.userId, mine: true, text, time: Date.now(), status: 'pending', media, kind: ref?.kind, ref: ref?.seq };
    await this.chats.put(pending);
    this.onChange();
    const payload = await this.e2ee.encrypt(this.socket, id, await this.members(id), body);
    const attachments = media ? [uuidBytes(media.id)] : [];
    const kind = ref?.kind === 'edit' ? MessageKind.EDIT : ref?.kind === 'reaction' ? MessageKind.REACTION : MessageKind.NORMAL;
    const referenceSeq = ref?.seq ?? 0;
    await this.chats.queue({ clientMsgId, conversation: id, payload, attachments, kind, referenceSeq });
    const answer = await this.socket.send(clientMsgId, { case: 'send', value: { clientMsgId, conversationId: uuidBytes(id), payload, attachments, kind, referenceSeq: BigInt(referenceSeq) } });
    await this.onSendAck(answer, text);
  }

  private async onSendAck(answer: ServerKind, text?: string): Promise<void> {
    if (answer.case !== 'sendAck') return;
    const a = answer.value;
    const id = uuidText(a.conversationId);
    const seq = Number(a.seq);
    const pending = this.chats.list(id).find((m) => m.clientMsgId === a.clientMsgId);
    const o = this.chats.outbox.get(a.clientMsgId);
    const message: ChatMessage = pending ?? { conversation: id, seq, clientMsgId: a.clientMsgId, sender: this.profile.userId, mine: true, text: text ?? '', time: Number(a.serverTimeMs), status: 'sent' };
    if (!pending && o?.kind) {
      message.kind = o.kind === MessageKind.EDIT ? 'edit' : 'reaction';
      message.ref = o.referenceSeq;
    }
    message.seq = seq;
    message.time = Number(a.serverTimeMs);
    if (message.status === 'pending') message.status = 'sent';
    await this.chats.put(message);
    await this.chats.sent(a.clientMsgId);
    const c = await this.chats.ensure(id);
    if (seq > c.lastSeq) {
      c.lastSeq = seq;
      c.readSeq = Math.max(c.readSeq, seq);
      if (!message.kind) c.lastText = message.text;
      c.updated = message.time;
      await this.chats.saveConversation(c);
    }
    this.onChange();
  }

  /** Edits one of this user's messages in the open conversation (Send kind EDIT, encrypted like a message). */
  async editMessage(seq: number, text: string): Promise<void> {
    if (!text.trim() || !seq) return;
    await this.sendBody({ case: 'text', value: text }, text, undefined, { kind: 'edit', seq });
  }

  /** Reacts to a message of the open conversation with an emoji ('' removes this user's reaction). */
  async react(seq: number, emoji: string): Promise<void> {
    if (!seq) return;
    await this.sendBody({ case: 'text', value: emoji }, emoji, undefined, { kind: 'reaction', seq });
  }

  /** Deletes one of this user's messages for everyone (DeleteMessage); shown deleted once the server's event comes. */
  async deleteForEveryone(seq: number): Promise<void> {
    const id = this.open;
    if (!id || !seq) return;
    await this.socket.request((requestId) => ({ case: 'deleteMessage', value: { requestId, conversationId: uuidBytes(id), seq: BigInt(seq) } }));
  }

  /**
   * Changes this user's state of a conversation (UpdateChat): mute until (0 unmutes,
   * \`forever\`) with silent pushes or none while muted, archive, pin (at most 3: the
   * server refuses a fourth), clear up to the last seq. The answer (InboxChanged) is
   * applied; other devices get it too.
   */
  async updateChat(id: string, change: { mutedUntil?: number | 'forever'; mutedPush?: 'silent' | 'off'; archived?: boolean; pinned?: boolean; clear?: boolean }): Promise<void> {
    const c = this.chats.conversations.get(id);
    if (!c) return;
    const value: Record<string, unknown> = { conversationId: uuidBytes(id) };
    if (change.mutedUntil !== undefined) {
      value.mutedUntilMs = change.mutedUntil === 'forever' ? 18446744073709551615n : BigInt(change.mutedUntil);
      if (change.mutedUntil !== 0) value.mutedPush = change.mutedPush === 'off' ? MutedPush.OFF : MutedPush.SILENT;
    }
    if (change.archived !== undefined) value.archived = change.archived;
    if (change.pinned !== undefined) value.pinned = change.pinned;
    if (change.clear) value.clearedUpTo = BigInt(c.lastSeq);
    try {
      const answer = await this.socket.request((requestId) => ({ case: 'updateChat', value: { ...value, requestId } as never }));
      if (answer.case === 'inboxChanged' && answer.value.entry) await this.applyEntry(answer.value.entry);
    } catch (error) {
      if (error instanceof Rejected && error.code === ErrorCode.TOO_MANY_PINS) throw new Error('You can pin up to 3 chats: unpin one first');
      throw error;
    }
  }

  /** Tells the open conversation we are typing (at most every 3 s). */
  typingNow(): void {
    if (!this.open || Date.now() - this.typingSent < 3000) return;
    this.typingSent = Date.now();
    this.socket.write({ case: 'typing', value: { conversationId: uuidBytes(this.open), active: true } });
  }
}
