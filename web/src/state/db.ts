/**
 * The client's durable state in IndexedDB: one key-value object store, read and written
 * as whole records. Writes are coalesced: every write issued before the next commit goes
 * into one readwrite transaction (the last write of a key wins), so a burst of frames
 * (catch-up) costs one transaction, not several per frame. `put` and `del` resolve once
 * their transaction committed; `later` queues a record computed at commit time (a pickle:
 * computed once however often it changed); `settled` resolves once everything written so
 * far is committed (wait for it before telling the server something was stored).
 */

const DB_NAME = 'switchboard';
const STORE = 'kv';

let opened: Promise<IDBDatabase> | null = null;

function db(): Promise<IDBDatabase> {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opened;
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

/** A queued write: a value, a value computed at commit (`undefined`: nothing to write), or a deletion. */
type Op = { value: unknown } | { compute: () => unknown } | { delete: true };

const pending = new Map<string, Op>();
/** The commit of the writes queued now (null when none is scheduled). */
let next: Promise<void> | null = null;
/** The commit of the last batch started. */
let last: Promise<void> = Promise.resolve();

function schedule(): Promise<void> {
  next ??= new Promise<void>((resolve) => setTimeout(resolve, 0)).then(commit);
  return next;
}

async function commit(): Promise<void> {
  next = null;
  const ops = [...pending];
  pending.clear();
  const run = (async () => {
    const tx = (await db()).transaction(STORE, 'readwrite');
    const store = tx.objectStore(STORE);
    for (const [key, op] of ops) {
      if ('delete' in op) store.delete(key);
      else {
        const value = 'compute' in op ? op.compute() : op.value;
        if (value !== undefined) store.put(value, key);
      }
    }
    await done(tx);
  })();
  last = run;
  run.catch(() => {});
  return run;
}

/** One record, or undefined (a write not yet committed included). */
export async function get<T>(key: string): Promise<T | undefined> {
  const op = pending.get(key);
  if (op) return ('delete' in op ? undefined : 'compute' in op ? op.compute() : op.value) as T | undefined;
  const tx = (await db()).transaction(STORE, 'readonly');
  const request = tx.objectStore(STORE).get(key);
  await done(tx);
  return request.result as T | undefined;
}

/** Writes several records in one transaction (all or none), with whatever else is queued. */
export function putAll(entries: Array<[string, unknown]>): Promise<void> {
  if (entries.length === 0) return Promise.resolve();
  for (const [key, value] of entries) pending.set(key, { value });
  return schedule();
}

/** Writes one record. */
export function put(key: string, value: unknown): Promise<void> {
  return putAll([[key, value]]);
}

/** Queues a record computed when the batch commits (its latest state then); never rejects. */
export function later(key: string, compute: () => unknown): void {
  pending.set(key, { compute });
  schedule().catch((error: unknown) => console.warn(`IndexedDB write of ${key} failed`, error));
}

/** Deletes one record. */
export function del(key: string): Promise<void> {
  pending.set(key, { delete: true });
  return schedule();
}

/** Resolves once every write issued so far is committed (rejects if that commit failed). */
export function settled(): Promise<void> {
  return pending.size ? schedule() : last;
}

/** Every record whose key starts with `prefix`, in key order (queued writes committed first). */
export async function scan<T>(prefix: string): Promise<Array<[string, T]>> {
  await settled();
  const tx = (await db()).transaction(STORE, 'readonly');
  const range = IDBKeyRange.bound(prefix, `${prefix}\uffff`);
  const keys = tx.objectStore(STORE).getAllKeys(range);
  const values = tx.objectStore(STORE).getAll(range);
  await done(tx);
  return keys.result.map((k, i) => [String(k), values.result[i] as T]);
}
