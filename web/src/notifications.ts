/**
 * Browser notifications (the Notification API) for messages and reactions that arrive
 * while the user is away from the tab (hidden, or the window without focus): one per
 * conversation at a time (tagged with its id, so several collapse into the latest), the
 * sender's name and the text; a click focuses the window and opens that chat. Permission
 * is asked only from a user gesture (the "Enable notifications" button), never on load.
 * The caller decides what deserves one (not own messages, not muted chats).
 */

/** Whether the user is away from the app: the tab is hidden or its window lacks focus. */
export function away(): boolean {
  return document.visibilityState === 'hidden' || !document.hasFocus();
}

/** The notification body of an attachment: 📷 for images, 📎 for other files. */
export function mediaLabel(mime: string): string {
  return mime.startsWith('image/') ? '📷 Photo' : '📎 File';
}

export class Notifier {
  /** The notification shown per conversation (closed when that chat is opened). */
  private shown = new Map<string, Notification>();

  /** @param open opens a conversation (a notification was clicked). */
  constructor(private readonly open: (conversation: string) => void) {}

  /** The browser's permission, or 'unsupported' without the Notification API. */
  permission(): NotificationPermission | 'unsupported' {
    return typeof Notification === 'undefined' ? 'unsupported' : Notification.permission;
  }

  /** Asks for permission (call from a click); answers the outcome. */
  async enable(): Promise<NotificationPermission | 'unsupported'> {
    if (this.permission() === 'unsupported') return 'unsupported';
    return Notification.requestPermission();
  }

  /** Shows a notification for a conversation if the user is away and has allowed them. */
  show(conversation: string, title: string, body: string): void {
    if (!away() || this.permission() !== 'granted') return;
    let n: Notification;
    try {
      n = new Notification(title, { body, tag: conversation });
    } catch {
      // Some browsers (Android Chrome) allow them only from a service worker.
      return;
    }
    this.shown.set(conversation, n);
    n.addEventListener('click', () => {
      window.focus();
      n.close();
      this.open(conversation);
    });
    n.addEventListener('close', () => {
      if (this.shown.get(conversation) === n) this.shown.delete(conversation);
    });
  }

  /** Closes a conversation's notification (the user opened the chat). */
  dismiss(conversation: string): void {
    this.shown.get(conversation)?.close();
    this.shown.delete(conversation);
  }
}
