/**
 * Groups: what a group event (a `Message` with `event` set) does to the conversation's
 * state (members, admins, subject, invite) and the line it shows, and the group actions
 * (`GroupChange`: add, remove, promote, demote, leave, subject, invite links; `JoinGroup`;
 * `GroupInfoRequest`). A refusal (NOT_ADMIN, INVALID_INVITE...) rejects with the server's
 * code and message, for the view to show.
 */
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { App } from './app';
import type { ConversationEvent, GroupChangeSchema } from './gen/switchboard_pb';
import type { Conversation } from './state/chats';
import { uuidBytes, uuidText } from './util/bytes';

type Event = ConversationEvent['kind'];
type Change = MessageInitShape<typeof GroupChangeSchema>['change'];

/** The line a group event shows in the chat ('' for events shown otherwise, such as deletions). */
export function describe(e: Event, name: (user: string) => string): string {
  switch (e.case) {
    case 'created':
      return `Group “${e.value.subject}” created`;
    case 'subjectChanged':
      return `Subject: ${e.value}`;
    case 'descriptionChanged':
      return 'Description changed';
    case 'membersAdded':
      return `${e.value.userIds.map((u) => name(uuidText(u))).join(', ')} added`;
    case 'memberRemoved':
    case 'memberLeft': {
      const line = `${name(uuidText(e.value.userId))} ${e.case === 'memberRemoved' ? 'removed' : 'left'}`;
      return e.value.promotedUserId.length === 16 ? `${line}; ${name(uuidText(e.value.promotedUserId))} is now an admin` : line;
    }
    case 'promoted':
      return `${name(uuidText(e.value))} is now an admin`;
    case 'demoted':
      return `${name(uuidText(e.value))} is no longer an admin`;
    case 'joinedByInvite':
      return `${name(uuidText(e.value))} joined with an invite link`;
    case 'inviteChanged':
      return e.value ? 'Invite link created' : 'Invite link revoked';
    case 'adminsOnlySendChanged':
      return e.value ? 'Only admins can send messages' : 'Everyone can send messages';
    case 'adminsOnlyInfoChanged':
      return e.value ? 'Only admins can change the group info' : 'Everyone can change the group info';
    case 'retentionChanged':
      return e.value ? `Disappearing messages: ${e.value} s` : 'Disappearing messages off';
    case 'messageDeleted':
      return '';
    default:
      return 'event';
  }
}

/**
 * Applies a live (not history) group event to the conversation's state. Answers whether
 * this user just (re)joined: the group's full state is then fetched (the log they see
 * starts at the event that added them).
 */
export function apply(c: Conversation, e: Event, me: string): boolean {
  const without = (list: string[] | undefined, user: string) => (list ?? []).filter((u) => u !== user);
  switch (e.case) {
    case 'created':
      c.kind = 'group';
      c.title = e.value.subject;
      c.members = e.value.memberUserIds.map(uuidText);
      c.admins = e.value.adminUserIds.map(uuidText);
      c.member = true;
      return false;
    case 'membersAdded':
    case 'joinedByInvite': {
      c.kind = 'group';
      const added = e.case === 'membersAdded' ? e.value.userIds.map(uuidText) : [uuidText(e.value)];
      c.members = [...new Set([...(c.members ?? []), ...added])];
      if (!added.includes(me)) return false;
      c.member = true;
      return true;
    }
    case 'memberRemoved':
    case 'memberLeft': {
      const user = uuidText(e.value.userId);
      c.members = without(c.members, user);
      c.admins = without(c.admins, user);
      if (e.value.promotedUserId.length === 16) c.admins = [...new Set([...c.admins, uuidText(e.value.promotedUserId)])];
      if (user === me) {
        c.member = false;
        c.inviteActive = false;
      }
      return false;
    }
    case 'promoted':
      c.admins = [...new Set([...(c.admins ?? []), uuidText(e.value)])];
      return false;
    case 'demoted':
      c.admins = without(c.admins, uuidText(e.value));
      return false;
    case 'subjectChanged':
      c.title = e.value;
      return false;
    case 'inviteChanged':
      c.inviteActive = e.value;
      return false;
    default:
      return false;
  }
}

/** An invite link's or a pasted text's token (32 hex characters), or the text as it is. */
export function inviteToken(text: string): string {
  return text.trim().match(/([0-9a-f]{32})\s*$/i)?.[1]?.toLowerCase() ?? text.trim();
}

/** The group actions of one signed-in client. */
export class Groups {
  /** Invite tokens this device created (the server gives the token to the creating admin only). */
  readonly invites = new Map<string, string>();

  constructor(private readonly app: App) {}

  /** The link that opens the app with the join form filled in. */
  link(token: string): string {
    return `${location.origin}/app/#join=${token}`;
  }

  private async change(id: string, change: Change): Promise<{ token: string }> {
    const answer = await this.app.socket.request((requestId) => ({ case: 'groupChange', value: { requestId, conversationId: uuidBytes(id), change } }));
    return { token: answer.case === 'groupAnswer' ? answer.value.inviteToken : '' };
  }

  /** Adds members (admins only); the event updates every member's list. */
  async add(id: string, users: string[]): Promise<void> {
    if (users.length) await this.change(id, { case: 'addMembers', value: { userIds: users.map(uuidBytes) } });
  }

  async remove(id: string, user: string): Promise<void> {
    await this.change(id, { case: 'removeMember', value: uuidBytes(user) });
  }

  async promote(id: string, user: string): Promise<void> {
    await this.change(id, { case: 'promote', value: uuidBytes(user) });
  }

  /** Demotes an admin (the server keeps at least one: INVALID_ARGUMENT for the last). */
  async demote(id: string, user: string): Promise<void> {
    await this.change(id, { case: 'demote', value: uuidBytes(user) });
  }

  /** Leaves the group: the `member_left` event makes it read-only here. */
  async leave(id: string): Promise<void> {
    await this.change(id, { case: 'leave', value: {} });
  }

  /** Renames the group; every member's title follows the `subject_changed` event. */
  async setSubject(id: string, subject: string): Promise<void> {
    if (subject.trim()) await this.change(id, { case: 'setSubject', value: subject.trim() });
  }

  /** Creates (or replaces) the invite link; answers the link. */
  async createInvite(id: string): Promise<string> {
    const { token } = await this.change(id, { case: 'createInvite', value: {} });
    this.invites.set(id, token);
    this.app.onChange();
    return this.link(token);
  }

  async revokeInvite(id: string): Promise<void> {
    await this.change(id, { case: 'revokeInvite', value: {} });
    this.invites.delete(id);
    this.app.onChange();
  }

  /** Joins a group with an invite link or token (`JoinGroup`) and opens it. */
  async join(linkOrToken: string): Promise<void> {
    const token = inviteToken(linkOrToken);
    const answer = await this.app.socket.request((requestId) => ({ case: 'joinGroup', value: { requestId, inviteToken: token } }));
    if (answer.case !== 'groupAnswer') return;
    const id = uuidText(answer.value.conversationId);
    const c = await this.app.chats.ensure(id, { kind: 'group', title: 'Group' });
    c.member = true;
    await this.app.chats.saveConversation(c);
    await this.info(id);
    await this.app.select(id);
  }

  /** The group's current state from the server (subject, members, admins, invite). */
  async info(id: string): Promise<void> {
    try {
      const answer = await this.app.socket.request((requestId) => ({ case: 'groupInfo', value: { requestId, conversationId: uuidBytes(id) } }));
      if (answer.case !== 'groupInfo') return;
      const c = await this.app.chats.ensure(id);
      const g = answer.value;
      c.title = g.subject || c.title;
      c.members = g.memberUserIds.map(uuidText);
      c.admins = g.adminUserIds.map(uuidText);
      c.inviteActive = g.inviteActive;
      if (!g.inviteActive) this.invites.delete(id);
      await this.app.chats.saveConversation(c);
      await this.app.resolvePeers();
      this.app.onChange();
    } catch {
      // asked again at the next sync
    }
  }
}
