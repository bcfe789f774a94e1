/**
 * One device's end-to-end encryption, exactly as the Rust SDK does it (docs/e2ee.md,
 * src/sdk/): an Olm account with signed identity, one-time and fallback keys; device lists
 * checked against their signatures; Olm sessions opened from claimed, signed one-time keys;
 * a Megolm outbound session per conversation, rotated and shared over to-device messages;
 * received room keys taken in with every check of sender and recipient; conversation
 * messages decrypted (or kept until their key arrives). State lives in IndexedDB, written
 * before anything that depends on it leaves the device.
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { Algorithm, EnvelopeSchema, ForwardedRoomKeySchema, ForwardedRoomKeysSchema, OlmPlaintextSchema, RoomPlaintextSchema } from '../gen/e2ee_pb';
import type { ForwardedRoomKey, OlmPlaintext, RoomKey, RoomPlaintext } from '../gen/e2ee_pb';
import type { KeysLow, Message, ToDeviceMessage } from '../gen/switchboard_pb';
import { ErrorCode } from '../gen/switchboard_pb';
import { Rejected } from '../net/socket';
import type { Socket } from '../net/socket';
import * as db from '../state/db';
import { b64, equal, randomId, unb64, uuidBytes, uuidText } from '../util/bytes';
import { Olm, megolmDecrypt, megolmEncrypt, olmDecrypt, olmEncrypt } from './olm-lib';
import { identitySignedBytes, oneTimeKeySignedBytes, verify } from './signed';

interface DeviceKeys {
  curve: Uint8Array;
  ed: Uint8Array;
}

interface InboundRecord {
  pickle: string;
  conversation: string;
  user: string;
  device: string;
}

interface OutboundRecord {
  pickle: string;
  created: number;
  count: number;
  shared: string[];
}

/** What decrypting a conversation message gave. */
export type Decrypted = { ok: true; plaintext: RoomPlaintext } | { ok: false; retryable: boolean; reason: string; session?: string };

const MAX_MESSAGES = 100;
const MAX_AGE_MS = 7 * 24 * 3600 * 1000;
const MAX_SESSIONS_PER_PEER = 8;
/** Forwarded keys per Olm message (each to-device payload is at most 16 KiB), as the Rust SDK. */
const FORWARDED_PER_MESSAGE = 40;

function json<T>(text: string): T {
  return JSON.parse(text) as T;
}

/** The E2EE state of this device. */
export class E2ee {
  private account = new Olm.Account();
  private olm = new Map<string, Olm.Session[]>();
  private inbound = new Map<string, { session: Olm.InboundGroupSession; record: InboundRecord }>();
  private outbound = new Map<string, { session: Olm.OutboundGroupSession; record: OutboundRecord }>();
  private devices = new Map<string, Map<string, DeviceKeys>>();
  private seenIndices = new Map<string, string>();
  private position = 0n;
  private acked = 0n;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private wanted = new Set<string>();
  private prefetching: Promise<void> | null = null;
  private pickleKey = '';

  private constructor(
    readonly user: string,
    readonly device: string,
  ) {}

  /** Opens (or creates) this device's state. */
  static async open(user: string, device: string): Promise<E2ee> {
    const e = new E2ee(user, device);
    let key = await db.get<string>('e2ee:pickle-key');
    if (!key) {
      key = b64(crypto.getRandomValues(new Uint8Array(32)));
      await db.put('e2ee:pickle-key', key);
    }
    e.pickleKey = key;
    const account = await db.get<string>('e2ee:account');
    if (account) e.account.unpickle(key, account);
    else {
      e.account.create();
      await db.put('e2ee:account', e.account.pickle(key));
    }
    for (const [name, pickles] of await db.scan<string[]>('olm:')) {
      e.olm.set(
        name.slice(4),
        pickles.map((p) => {
          const s = new Olm.Session();
          s.unpickle(key, p);
          return s;
        }),
      );
    }
    for (const [name, record] of await db.scan<InboundRecord>('megolm-in:')) {
      const session = new Olm.InboundGroupSession();
      session.unpickle(key, record.pickle);
      e.inbound.set(name.slice(10), { session, record });
    }
    for (const [name, record] of await db.scan<OutboundRecord>('megolm-out:')) {
      const session = new Olm.OutboundGroupSession();
      session.unpickle(key, record.pickle);
      e.outbound.set(name.slice(11), { session, record });
    }
    e.position = BigInt((await db.get<string>('e2ee:to-device-position')) ?? '0');
    return e;
  }

  /** Curve25519 and Ed25519 identity keys, raw. */
  identity(): DeviceKeys {
    const keys = json<{ curve25519: string; ed25519: string }>(this.account.identity_keys());
    return { curve: unb64(keys.curve25519), ed: unb64(keys.ed25519) };
  }

  private sign(bytes: Uint8Array): Uint8Array {
    return unb64(this.account.sign(bytes));
  }

  private signedKeys(json_: string, fallback: boolean): Array<{ keyId: string; key: Uint8Array; signature: Uint8Array }> {
    const keys = json<{ curve25519: Record<string, string> }>(json_).curve25519;
    return Object.entries(keys)
      .map(([keyId, k]) => {
        const key = unb64(k);
        return { keyId, key, signature: this.sign(oneTimeKeySignedBytes(this.device, keyId, key, fallback)) };
      })
      .sort((a, b) => (a.keyId < b.keyId ? -1 : 1));
  }

  /** Builds an upload of `count` one-time keys and a new fallback key (and the identity), stores the private halves. */
  private async upload(socket: Socket, count: number, identity: boolean): Promise<void> {
    this.account.generate_one_time_keys(count);
    const oneTimeKeys = this.signedKeys(this.account.one_time_keys(), false);
    this.account.generate_fallback_key();
    const fallback = this.signedKeys(this.account.unpublished_fallback_key(), true)[0];
    const id = this.identity();
    const identityMsg = identity ? { curve25519: id.curve, ed25519: id.ed, signature: this.sign(identitySignedBytes(this.user, this.device, id.curve, id.ed)) } : undefined;
    this.account.mark_keys_as_published();
    await db.put('e2ee:account', this.account.pickle(this.pickleKey));
    await socket.request((requestId) => ({ case: 'uploadKeys', value: { requestId, identity: identityMsg, oneTimeKeys, fallbackKey: fallback } }));
  }

  /** Publishes the device's keys once (on its first connection), and lists our own devices. */
  async publish(socket: Socket): Promise<void> {
    if (!(await db.get<boolean>('e2ee:published'))) {
      await this.upload(socket, 50, true);
      await db.put('e2ee:published', true);
    }
    await this.refresh(socket, [this.user]);
  }

  /** Tops up one-time keys (KeysLow). */
  async onKeysLow(socket: Socket, low: KeysLow): Promise<void> {
    const count = Math.max(1, Number(BigInt(low.target) - low.oneTimeKeyCount));
    await this.upload(socket, Math.min(count, 50), false);
  }

  /**
   * Lists the devices of the senders of to-device messages that have arrived but wait
   * their turn: one query for many senders instead of one each (catch-up after an
   * absence brings a room key from every peer that wrote meanwhile).
   */
  prefetch(socket: Socket, user: string): void {
    if (this.devices.has(user)) return;
    this.wanted.add(user);
    if (this.prefetching) return;
    this.prefetching = new Promise<void>((resolve) => setTimeout(resolve, 20))
      .then(() => {
        const users = [...this.wanted].slice(0, 256);
        users.forEach((u) => this.wanted.delete(u));
        return this.refresh(socket, users);
      })
      .catch(() => {})
      .finally(() => {
        this.prefetching = null;
        if (this.wanted.size) this.prefetch(socket, [...this.wanted][0]);
      });
  }

  /** Queries device lists, keeping only devices whose identity signature checks. */
  async refresh(socket: Socket, users: string[]): Promise<void> {
    if (users.length === 0) return;
    let answer;
    try {
      answer = await socket.request((requestId) => ({ case: 'queryDevices', value: { requestId, userIds: users.map(uuidBytes) } }));
    } catch (error) {
      // One user out of reach refuses the whole query: ask one by one.
      if (error instanceof Rejected && error.code === ErrorCode.NO_SHARED_CONVERSATION) {
        if (users.length === 1) this.devices.delete(users[0]);
        else for (const user of users) await this.refresh(socket, [user]);
        return;
      }
      throw error;
    }
    if (answer.case !== 'deviceList') return;
    for (const listed of answer.value.users) {
      const u = uuidText(listed.userId);
      const map = new Map<string, DeviceKeys>();
      for (const d of listed.devices) {
        const id = d.identity;
        if (!id || id.curve25519.length !== 32 || id.ed25519.length !== 32) continue;
        const device = uuidText(d.deviceId);
        if (!verify(id.ed25519, identitySignedBytes(u, device, id.curve25519, id.ed25519), id.signature)) continue;
        map.set(device, { curve: id.curve25519, ed: id.ed25519 });
      }
      this.devices.set(u, map);
    }
  }

  private async deviceKeys(socket: Socket, user: string, device: string): Promise<DeviceKeys | undefined> {
    while (this.prefetching && !this.devices.get(user)?.has(device)) await this.prefetching;
    if (!this.devices.get(user)?.has(device)) await this.refresh(socket, [user]);
    return this.devices.get(user)?.get(device);
  }

  /** Queues the Olm sessions with a peer key for the next commit (pickled then). */
  private saveOlm(curve: string): void {
    db.later(`olm:${curve}`, () => (this.olm.get(curve) ?? []).map((s) => s.pickle(this.pickleKey)));
  }

  private pushSession(curve: string, session: Olm.Session): void {
    const list = this.olm.get(curve) ?? [];
    list.push(session);
    while (list.length > MAX_SESSIONS_PER_PEER) list.shift()?.free();
    this.olm.set(curve, list);
  }

  /** Opens Olm sessions (claiming signed one-time keys) with the devices that have none. */
  private async ensureOlm(socket: Socket, targets: Array<[string, string]>): Promise<void> {
    const missing = targets.filter(([u, d]) => {
      const keys = this.devices.get(u)?.get(d);
      return keys && !(this.olm.get(b64(keys.curve))?.length);
    });
    if (missing.length === 0) return;
    const answer = await socket.request((requestId) => ({
      case: 'claimKeys',
      value: { requestId, devices: missing.map(([u, d]) => ({ userId: uuidBytes(u), deviceId: uuidBytes(d) })) },
    }));
    if (answer.case !== 'claimedKeys') return;
    for (const c of answer.value.keys) {
      const user = uuidText(c.userId);
      const device = uuidText(c.deviceId);
      const keys = this.devices.get(user)?.get(device);
      if (!keys || !c.key || c.key.key.length !== 32) continue;
      if (!verify(keys.ed, oneTimeKeySignedBytes(device, c.key.keyId, c.key.key, c.fallback), c.key.signature)) continue;
      const session = new Olm.Session();
      session.create_outbound(this.account, b64(keys.curve), b64(c.key.key));
      this.pushSession(b64(keys.curve), session);
      this.saveOlm(b64(keys.curve));
    }
  }

  /** Sends a room key to each target over Olm; the targets it went to. */
  private shareKey(socket: Socket, targets: Array<[string, string]>, key: RoomKey): Promise<string[]> {
    return this.sendOlm(socket, targets, { case: 'roomKey', value: key });
  }

  /** Sends one Olm-encrypted content to each target (opening sessions first); the targets it went to. */
  private async sendOlm(socket: Socket, targets: Array<[string, string]>, content: OlmPlaintext['content']): Promise<string[]> {
    await this.ensureOlm(socket, targets);
    const me = this.identity();
    const wire: Array<{ userId: Uint8Array; deviceId: Uint8Array; payload: Uint8Array }> = [];
    const sent: string[] = [];
    for (const [user, device] of targets) {
      const keys = this.devices.get(user)?.get(device);
      const session = keys && this.olm.get(b64(keys.curve))?.at(-1);
      if (!keys || !session) continue;
      const plaintext = create(OlmPlaintextSchema, {
        senderUserId: uuidBytes(this.user),
        senderDeviceId: uuidBytes(this.device),
        senderEd25519: me.ed,
        recipientUserId: uuidBytes(user),
        recipientDeviceId: uuidBytes(device),
        recipientEd25519: keys.ed,
        content,
      });
      const message = olmEncrypt(session, toBinary(OlmPlaintextSchema, plaintext));
      this.saveOlm(b64(keys.curve));
      const envelope = create(EnvelopeSchema, {
        version: 1,
        algorithm: Algorithm.OLM_V1,
        senderKey: me.curve,
        senderDeviceId: uuidBytes(this.device),
        ciphertext: unb64(message.body),
        olmMessageType: message.type,
      });
      wire.push({ userId: uuidBytes(user), deviceId: uuidBytes(device), payload: toBinary(EnvelopeSchema, envelope) });
      sent.push(`${user}/${device}`);
    }
    // The sessions' new state is stored before anything they encrypted leaves.
    await db.settled();
    for (let i = 0; i < wire.length; i += 1024) {
      const clientId = randomId();
      await socket.sendToDevice(clientId, { case: 'sendToDevice', value: { clientId, targets: wire.slice(i, i + 1024) } });
    }
    return sent;
  }

  /**
   * Every inbound Megolm session this device holds, exported at its first known index, as
   * forwarded keys (what the Rust SDK's `export_all` gives), ordered by session id.
   */
  exportAll(): ForwardedRoomKey[] {
    const out: ForwardedRoomKey[] = [];
    for (const [name, { session, record }] of this.inbound) {
      const sessionId = name.slice(name.indexOf('|') + 1);
      out.push(
        create(ForwardedRoomKeySchema, {
          conversationId: uuidBytes(record.conversation),
          originUserId: uuidBytes(record.user),
          originDeviceId: uuidBytes(record.device),
          originSenderKey: unb64(name.slice(0, name.indexOf('|'))),
          sessionId,
          exportedSessionKey: unb64(session.export_session(session.first_known_index())),
        }),
      );
    }
    return out.sort((a, b) => (a.sessionId < b.sessionId ? -1 : a.sessionId > b.sessionId ? 1 : 0));
  }

  /**
   * Sends every inbound session this device holds to some of this user's own devices
   * (never another user's: those are filtered out), FORWARDED_PER_MESSAGE keys per Olm
   * message, so a device linked later reads the history it was sent before it existed.
   * Returns how many keys went out.
   */
  async forwardSessions(socket: Socket, devices: string[]): Promise<number> {
    const targets: Array<[string, string]> = devices.filter((d) => d !== this.device && this.devices.get(this.user)?.has(d)).map((d) => [this.user, d]);
    const keys = this.exportAll();
    if (!targets.length || !keys.length) return 0;
    for (let i = 0; i < keys.length; i += FORWARDED_PER_MESSAGE) {
      await this.sendOlm(socket, targets, { case: 'forwardedRoomKeys', value: create(ForwardedRoomKeysSchema, { keys: keys.slice(i, i + FORWARDED_PER_MESSAGE) }) });
    }
    return keys.length;
  }

  /** Queues an inbound session for the next commit (pickled then). */
  private saveInbound(name: string): Promise<void> {
    db.later(`megolm-in:${name}`, () => {
      const entry = this.inbound.get(name);
      if (!entry) return undefined;
      entry.record.pickle = entry.session.pickle(this.pickleKey);
      return entry.record;
    });
    return db.settled();
  }

  /**
   * Encrypts a conversation message for every device of `members` (our own user included,
   * this device excluded): rotation and key sharing first, then the Megolm envelope.
   */
  async encrypt(socket: Socket, conversation: string, members: string[], body: RoomPlaintext['body']): Promise<Uint8Array> {
    const unknown = members.filter((m) => !this.devices.has(m));
    if (unknown.length) await this.refresh(socket, unknown);
    const recipients: Array<[string, string]> = [];
    for (const user of members) for (const device of this.devices.get(user)?.keys() ?? []) if (!(user === this.user && device === this.device)) recipients.push([user, device]);
    const names = new Set(recipients.map(([u, d]) => `${u}/${d}`));
    let out = this.outbound.get(conversation);
    const now = Date.now();
    const stale = out && (out.record.count >= MAX_MESSAGES || now - out.record.created >= MAX_AGE_MS || out.record.shared.some((d) => !names.has(d)));
    if (!out || stale) {
      out?.session.free();
      const session = new Olm.OutboundGroupSession();
      session.create();
      out = { session, record: { pickle: session.pickle(this.pickleKey), created: now, count: 0, shared: [] } };
      this.outbound.set(conversation, out);
      // Our own inbound copy: this device reads its own messages in history too.
      const inbound = new Olm.InboundGroupSession();
      inbound.create(session.session_key());
      const name = `${b64(this.identity().curve)}|${session.session_id()}`;
      this.inbound.set(name, { session: inbound, record: { pickle: '', conversation, user: this.user, device: this.device } });
      await this.saveInbound(name);
      await db.put(`megolm-out:${conversation}`, out.record);
    }
    const lacking = recipients.filter(([u, d]) => !out.record.shared.includes(`${u}/${d}`));
    if (lacking.length) {
      const key = { conversationId: uuidBytes(conversation), sessionId: out.session.session_id(), sessionKey: unb64(out.session.session_key()) } as RoomKey;
      const shared = await this.shareKey(socket, lacking, key);
      out.record.shared.push(...shared);
    }
    const plaintext = create(RoomPlaintextSchema, { conversationId: uuidBytes(conversation), body });
    const ciphertext = unb64(megolmEncrypt(out.session, toBinary(RoomPlaintextSchema, plaintext)));
    out.record.count++;
    out.record.pickle = out.session.pickle(this.pickleKey);
    // Stored before the message leaves: a Megolm index is never used twice.
    await db.put(`megolm-out:${conversation}`, out.record);
    const envelope = create(EnvelopeSchema, {
      version: 1,
      algorithm: Algorithm.MEGOLM_V1,
      senderKey: this.identity().curve,
      senderDeviceId: uuidBytes(this.device),
      sessionId: out.session.session_id(),
      ciphertext,
    });
    return toBinary(EnvelopeSchema, envelope);
  }

  /** Decrypts a conversation message with the inbound session its envelope names. */
  decrypt(m: Message): Decrypted {
    let envelope;
    try {
      envelope = fromBinary(EnvelopeSchema, m.payload);
    } catch {
      return { ok: false, retryable: false, reason: 'not an encrypted envelope' };
    }
    if (envelope.version !== 1) return { ok: false, retryable: false, reason: `envelope version ${envelope.version}` };
    if (envelope.algorithm !== Algorithm.MEGOLM_V1 || !envelope.sessionId || envelope.senderKey.length !== 32) return { ok: false, retryable: false, reason: 'not a megolm envelope' };
    const name = `${b64(envelope.senderKey)}|${envelope.sessionId}`;
    const entry = this.inbound.get(name);
    if (!entry) return { ok: false, retryable: true, reason: 'the key has not arrived yet', session: name };
    const conversation = uuidText(m.conversationId);
    if (entry.record.user !== uuidText(m.senderUserId) || entry.record.device !== uuidText(m.senderDeviceId) || entry.record.conversation !== conversation) {
      return { ok: false, retryable: false, reason: 'forged: the session belongs to another device or conversation' };
    }
    let opened;
    try {
      opened = megolmDecrypt(entry.session, b64(envelope.ciphertext));
    } catch (error) {
      const reason = String(error);
      return { ok: false, retryable: reason.includes('UNKNOWN_MESSAGE_INDEX'), reason, session: name };
    }
    const where = `${conversation}:${m.seq}`;
    const seen = this.seenIndices.get(`${name}#${opened.index}`);
    if (seen && seen !== where) return { ok: false, retryable: false, reason: 'forged: a replayed message index' };
    this.seenIndices.set(`${name}#${opened.index}`, where);
    let plaintext;
    try {
      plaintext = fromBinary(RoomPlaintextSchema, opened.plaintext);
    } catch {
      return { ok: false, retryable: false, reason: 'malformed plaintext' };
    }
    if (!equal(plaintext.conversationId, m.conversationId)) return { ok: false, retryable: false, reason: 'forged: sent to another conversation' };
    return { ok: true, plaintext };
  }

  /**
   * A to-device message: room keys over Olm, every check of sender and recipient. Returns
   * the inbound sessions (`senderKey|sessionId`) it added (the caller retries the messages
   * waiting for them). Acknowledged once handled (or found unusable) and stored.
   */
  async onToDevice(socket: Socket, td: ToDeviceMessage): Promise<string[]> {
    if (td.position <= this.position) {
      this.ack(socket, td.position);
      return [];
    }
    let added: string[] = [];
    try {
      added = await this.openToDevice(socket, td);
    } catch (error) {
      if (!(error instanceof Unusable)) throw error;
      console.warn(`to-device message ${td.position} not used: ${error.message}`);
    }
    this.position = td.position;
    db.later('e2ee:to-device-position', () => this.position.toString());
    this.ack(socket, td.position);
    return added;
  }

  /**
   * Acknowledges to-device entries up to `position`: one frame per burst (acks are
   * cumulative), once what they changed is stored.
   */
  private ack(socket: Socket, position: bigint): void {
    if (position > this.acked) this.acked = position;
    this.ackTimer ??= setTimeout(() => {
      const upTo = this.acked;
      db.settled()
        .then(() => socket.write({ case: 'ackToDevice', value: { upTo } }))
        .catch((error: unknown) => console.warn('to-device state not stored: not acknowledged', error))
        .finally(() => {
          this.ackTimer = null;
          if (this.acked > upTo) this.ack(socket, this.acked);
        });
    }, 50);
  }

  private async openToDevice(socket: Socket, td: ToDeviceMessage): Promise<string[]> {
    const user = uuidText(td.senderUserId);
    const device = uuidText(td.senderDeviceId);
    let envelope;
    try {
      envelope = fromBinary(EnvelopeSchema, td.payload);
    } catch {
      throw new Unusable('not an envelope');
    }
    if (envelope.version !== 1 || envelope.algorithm !== Algorithm.OLM_V1) throw new Unusable('not an olm envelope');
    if (uuidText(envelope.senderDeviceId) !== device) throw new Unusable('the envelope names another sending device');
    const keys = await this.deviceKeys(socket, user, device);
    if (!keys) throw new Unusable('the sending device has no published keys');
    if (!equal(keys.curve, envelope.senderKey)) throw new Unusable("the sender's Curve25519 key is not the one it published");
    const curve = b64(keys.curve);
    const body = b64(envelope.ciphertext);
    const type = envelope.olmMessageType;
    let plain: Uint8Array | null = null;
    const list = this.olm.get(curve) ?? [];
    for (let i = list.length - 1; i >= 0 && !plain; i--) {
      if (type === 0 && !list[i].matches_inbound_from(curve, body)) continue;
      try {
        plain = olmDecrypt(list[i], type, body);
        list.push(...list.splice(i, 1));
      } catch {
        // try the next session
      }
    }
    if (!plain && type === 0 && !list.some((s) => s.matches_inbound_from(curve, body))) {
      const session = new Olm.Session();
      try {
        session.create_inbound_from(this.account, curve, body);
        plain = olmDecrypt(session, type, body);
      } catch (error) {
        session.free();
        throw new Unusable(`olm: ${String(error)}`);
      }
      this.account.remove_one_time_keys(session);
      this.pushSession(curve, session);
      db.later('e2ee:account', () => this.account.pickle(this.pickleKey));
    }
    if (!plain) throw new Unusable('no olm session decrypts it');
    this.saveOlm(curve);
    let p: OlmPlaintext;
    try {
      p = fromBinary(OlmPlaintextSchema, plain);
    } catch {
      throw new Unusable('malformed olm plaintext');
    }
    const me = this.identity();
    if (!equal(p.senderUserId, td.senderUserId) || !equal(p.senderDeviceId, td.senderDeviceId) || !equal(p.senderEd25519, keys.ed)) {
      throw new Unusable("the plaintext's sender is not the device the message came from");
    }
    if (!equal(p.recipientUserId, uuidBytes(this.user)) || !equal(p.recipientDeviceId, uuidBytes(this.device)) || !equal(p.recipientEd25519, me.ed)) {
      throw new Unusable('the plaintext is addressed to another device');
    }
    if (p.content.case === 'roomKey') {
      const key = p.content.value;
      const session = new Olm.InboundGroupSession();
      try {
        session.create(b64(key.sessionKey));
      } catch (error) {
        session.free();
        throw new Unusable(`room key: ${String(error)}`);
      }
      if (session.session_id() !== key.sessionId) throw new Unusable("room key's session id does not match its key");
      const name = `${curve}|${key.sessionId}`;
      const existing = this.inbound.get(name);
      // A key from an earlier index is kept; a later one never replaces it.
      if (existing && existing.session.first_known_index() <= session.first_known_index()) {
        session.free();
        return [];
      }
      existing?.session.free();
      this.inbound.set(name, { session, record: { pickle: '', conversation: uuidText(key.conversationId), user, device } });
      void this.saveInbound(name);
      return [name];
    }
    if (p.content.case === 'forwardedRoomKeys') {
      if (user !== this.user) throw new Unusable('forwarded room keys from another user refused');
      const added: string[] = [];
      for (const k of p.content.value.keys) {
        const session = new Olm.InboundGroupSession();
        try {
          session.import_session(b64(k.exportedSessionKey));
        } catch {
          session.free();
          continue;
        }
        if (session.session_id() !== k.sessionId) {
          session.free();
          continue;
        }
        const name = `${b64(k.originSenderKey)}|${k.sessionId}`;
        if (this.inbound.has(name)) {
          session.free();
          continue;
        }
        this.inbound.set(name, { session, record: { pickle: '', conversation: uuidText(k.conversationId), user: uuidText(k.originUserId), device: uuidText(k.originDeviceId) } });
        void this.saveInbound(name);
        added.push(name);
      }
      return added;
    }
    throw new Unusable('empty to-device content');
  }

  /**
   * Device lists changed: list the users again and acknowledge the notice. When our own
   * user has a device we did not list before (one just linked), it gets every Megolm
   * session this device holds, as the Rust SDK does.
   */
  async onDeviceListsChanged(socket: Socket, users: Uint8Array[]): Promise<void> {
    const texts = users.map(uuidText);
    const before = new Set(this.devices.get(this.user)?.keys() ?? []);
    await this.refresh(socket, texts);
    socket.write({ case: 'ackDeviceLists', value: { userIds: users } });
    if (!texts.includes(this.user) || before.size === 0) return;
    const fresh = [...(this.devices.get(this.user)?.keys() ?? [])].filter((d) => !before.has(d) && d !== this.device);
    if (fresh.length) {
      const count = await this.forwardSessions(socket, fresh);
      console.info(`forwarded ${count} room keys to ${fresh.length} new device(s) of this user`);
    }
  }
}

/** A to-device message that cannot be used (reported and acknowledged). */
class Unusable extends Error {}
