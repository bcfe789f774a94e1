/**
 * The conversations and messages this device knows, in memory and in IndexedDB: the list
 * with unread counts, each message once per (conversation, seq) whatever the server
 * repeats after a reconnect, tick states, and the outbox of sends not yet acknowledged
 * (resent identically after a reconnect, so the server's idempotency drops duplicates).
 */
import * as db from './db';

/** ✓ states of a message this device sent. */
export type Status = 'pending' | 'sent' | 'delivered' | 'read';

export interface ChatMessage {
  conversation: string;
  seq: number;
  clientMsgId: string;
  sender: string;
  mine: boolean;
  text: string;
  time: number;
  status: Status;
  /** Why it is not readable (yet), when it is not. */
  problem?: string;
  system?: boolean;
  /** An attachment: where it is and how to open it (from the encrypted message). */
  media?: MediaRef;
  /** Deleted for everyone (its text is the notice). */
  deleted?: boolean;
  /** An edit of, or a reaction to, the message at `ref` (not shown as a bubble of its own). */
  kind?: 'edit' | 'reaction';
  ref?: number;
}

/** An encrypted attachment's id and secrets, as its message carried them. */
export interface MediaRef {
  id: string;
  key: Uint8Array;
  sha256: Uint8Array;
  size: number;
  name: string;
  mime: string;
  thumbnail: Uint8Array;
}

export interface Conversation {
  id: string;
  kind: 'direct' | 'group';
  /** The other user of a 1:1. */
  peer?: string;
  title: string;
  lastText: string;
  updated: number;
  /** Highest seq this device has seen. */
  lastSeq: number;
  /** Highest seq this device told the server it read. */
  readSeq: number;
  unread: number;
  /** More unread than `unread` (the server counts the newest 200 entries only). */
  unreadMore?: boolean;
  members?: string[];
  /** When the user pinned it (ms), 0 or absent when not pinned. */
  pinned?: number;
  archived?: boolean;
  /** False once the user left or was removed from the group. */
  member?: boolean;
  /** Whether the server holds older messages than the oldest shown (unknown: undefined). */
  hasMore?: boolean;
  /** Muted until (ms since the epoch; 0 or absent: not muted; about 1.8e19: always). */
  mutedUntil?: number;
  /** What the server pushes while muted: silent pushes (the default) or none. */
  mutedPush?: 'silent' | 'off';
  /** A group's admins (user ids), from its events and GroupInfo. */
  admins?: string[];
  /** Whether the group has an invite link (its token is only known to the admin who made it). */
  inviteActive?: boolean;
  /** Messages up to this seq are cleared on the user's devices. */
  clearedUpTo?: number;
}

/** A send waiting for its SendAck: resent as is after a reconnect. */
export interface Outgoing {
  clientMsgId: string;
  conversation: string;
  payload: Uint8Array;
  attachments?: Uint8Array[];
  /** 1 = edit, 2 = reaction (protocol MessageKind), with the target's seq. */
  kind?: number;
  referenceSeq?: number;
}

const pad = (n: number) => String(n).padStart(12, '0');

/** The client's conversations and messages. */
export class Chats {
  readonly conversations = new Map<string, Conversation>();
  private messages = new Map<string, Map<string, ChatMessage>>();
  readonly outbox = new Map<string, Outgoing>();

  /** Loads everything stored. */
  async load(): Promise<void> {
    for (const [, c] of await db.scan<Conversation>('conv:')) this.conversations.set(c.id, c);
    for (const [, m] of await db.scan<ChatMessage>('msg:')) this.bucket(m.conversation).set(this.key(m), m);
    for (const [, o] of await db.scan<Outgoing>('outbox:')) this.outbox.set(o.clientMsgId, o);
  }

  private key(m: ChatMessage): string {
    return m.seq ? `s${pad(m.seq)}` : `p${m.clientMsgId}`;
  }

  private bucket(conversation: string): Map<string, ChatMessage> {
    let b = this.messages.get(conversation);
    if (!b) {
      b = new Map();
      this.messages.set(conversation, b);
    }
    return b;
  }

  /** The conversation, created (as a 1:1 unless told) when new. */
  async ensure(id: string, init: Partial<Conversation> = {}): Promise<Conversation> {
    let c = this.conversations.get(id);
    if (!c) {
      c = { id, kind: 'direct', title: id.slice(0, 8), lastText: '', updated: Date.now(), lastSeq: 0, readSeq: 0, unread: 0, ...init };
      this.conversations.set(id, c);
      this.saveConversation(c).catch((error: unknown) => console.warn('IndexedDB write failed', error));
    }
    return c;
  }

  /** Stores a conversation (its state when the queued writes commit; resolves then). */
  saveConversation(c: Conversation): Promise<void> {
    return db.put(`conv:${c.id}`, c);
  }

  /** Messages of a conversation, oldest first. */
  list(conversation: string): ChatMessage[] {
    return [...this.bucket(conversation).values()].sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity) || a.time - b.time);
  }

  has(conversation: string, seq: number): boolean {
    return this.bucket(conversation).has(`s${pad(seq)}`);
  }

  get(conversation: string, seq: number): ChatMessage | undefined {
    return this.bucket(conversation).get(`s${pad(seq)}`);
  }

  /** Stores a message (replacing its pending form once it has a seq); resolves once committed. */
  put(m: ChatMessage): Promise<void> {
    const b = this.bucket(m.conversation);
    const pendingKey = `p${m.clientMsgId}`;
    const writes: Array<Promise<void>> = [];
    if (m.seq && b.has(pendingKey)) {
      b.delete(pendingKey);
      writes.push(db.del(`msg:${m.conversation}:${pendingKey}`));
    }
    b.set(this.key(m), m);
    writes.push(db.put(`msg:${m.conversation}:${this.key(m)}`, m));
    return Promise.all(writes).then(() => {});
  }

  /** Forgets the messages up to `upTo` (the chat was cleared up to there). */
  async clear(conversation: string, upTo: number): Promise<void> {
    const b = this.bucket(conversation);
    for (const [key, m] of [...b.entries()]) {
      if (m.seq && m.seq <= upTo) {
        b.delete(key);
        await db.del(`msg:${conversation}:${key}`);
      }
    }
  }

  /** Queues a send until its SendAck. */
  async queue(o: Outgoing): Promise<void> {
    this.outbox.set(o.clientMsgId, o);
    await db.put(`outbox:${o.clientMsgId}`, o);
  }

  async sent(clientMsgId: string): Promise<void> {
    this.outbox.delete(clientMsgId);
    await db.del(`outbox:${clientMsgId}`);
  }

  /** Moves this user's messages up to `upTo` to at least `status`. */
  async mark(conversation: string, upTo: number, status: 'delivered' | 'read'): Promise<void> {
    const order: Status[] = ['pending', 'sent', 'delivered', 'read'];
    for (const m of this.bucket(conversation).values()) {
      if (m.mine && m.seq && m.seq <= upTo && order.indexOf(m.status) < order.indexOf(status)) {
        m.status = status;
        await this.put(m);
      }
    }
  }

  /** The lowest seq this device holds of a conversation (0 when none). */
  oldest(conversation: string): number {
    let low = 0;
    for (const m of this.bucket(conversation).values()) if (m.seq && (!low || m.seq < low)) low = m.seq;
    return low;
  }

  /** Conversations as the list shows them: pinned first (latest pinned first), then most recent first. */
  sorted(): Conversation[] {
    return [...this.conversations.values()].sort((a, b) => (b.pinned ?? 0) - (a.pinned ?? 0) || b.updated - a.updated || (a.id < b.id ? -1 : 1));
  }
}

/** A message as shown: its latest edit by its sender, and each user's latest reaction. */
export interface Shown {
  message: ChatMessage;
  text: string;
  edited: boolean;
  /** emoji → how many. */
  reactions: Map<string, number>;
  /** This user's own reaction, if any. */
  mine?: string;
}

/** The bubbles of a conversation (oldest first): edits and reactions applied to their targets, never shown alone. */
export function shown(messages: ChatMessage[]): Shown[] {
  const out: Shown[] = [];
  const bySeq = new Map<number, Shown>();
  const byUser = new Map<number, Map<string, string>>();
  for (const m of messages) {
    if (m.kind) continue;
    const s: Shown = { message: m, text: m.text, edited: false, reactions: new Map() };
    out.push(s);
    if (m.seq) bySeq.set(m.seq, s);
  }
  // In seq order (pending ones last): the latest edit and reaction win.
  for (const m of messages) {
    // Deleted with their target (the server blanks them), or not readable: nothing to apply.
    if (!m.kind || !m.ref || m.problem || m.deleted) continue;
    const target = bySeq.get(m.ref);
    if (!target || target.message.deleted || target.message.system) continue;
    if (m.kind === 'edit') {
      if (m.sender !== target.message.sender) continue;
      target.text = m.text;
      target.edited = true;
    } else {
      const users = byUser.get(m.ref) ?? new Map<string, string>();
      users.set(m.mine ? '' : m.sender, m.text);
      byUser.set(m.ref, users);
    }
  }
  for (const [seq, users] of byUser) {
    const target = bySeq.get(seq) as Shown;
    for (const [user, emoji] of users) {
      if (!emoji) continue;
      target.reactions.set(emoji, (target.reactions.get(emoji) ?? 0) + 1);
      if (user === '') target.mine = emoji;
    }
  }
  return out;
}

/** Tick state of one of the user's own messages from a stored copy's counts (`others`: the other members, 1 in a 1:1). */
export function ticks(deliveredTo: number, readBy: number, others: number): Status {
  const need = Math.max(1, others);
  if (readBy >= need) return 'read';
  if (deliveredTo >= need) return 'delivered';
  return 'sent';
}

/** Whether status `a` is ahead of `b`. */
export function ahead(a: Status, b: Status): boolean {
  const order: Status[] = ['pending', 'sent', 'delivered', 'read'];
  return order.indexOf(a) > order.indexOf(b);
}
