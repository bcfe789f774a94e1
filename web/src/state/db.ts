/** The client's durable state in IndexedDB: one key-value object store, read and written as whole records. */

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

/** One record, or undefined. */
export async function get<T>(key: string): Promise<T | undefined> {
  const tx = (await db()).transaction(STORE, 'readonly');
  const request = tx.objectStore(STORE).get(key);
  await done(tx);
  return request.result as T | undefined;
}

/** Writes several records in one transaction (all or none). */
export async function putAll(entries: Array<[string, unknown]>): Promise<void> {
  if (entries.length === 0) return;
  const tx = (await db()).transaction(STORE, 'readwrite');
  const store = tx.objectStore(STORE);
  for (const [key, value] of entries) store.put(value, key);
  await done(tx);
}

/** Writes one record. */
export function put(key: string, value: unknown): Promise<void> {
  return putAll([[key, value]]);
}

/** Deletes one record. */
export async function del(key: string): Promise<void> {
  const tx = (await db()).transaction(STORE, 'readwrite');
  tx.objectStore(STORE).delete(key);
  await done(tx);
}

/** Every record whose key starts with `prefix`, in key order. */
export async function scan<T>(prefix: string): Promise<Array<[string, T]>> {
  const tx = (await db()).transaction(STORE, 'readonly');
  const range = IDBKeyRange.bound(prefix, `${prefix}\uffff`);
  const keys = tx.objectStore(STORE).getAllKeys(range);
  const values = tx.objectStore(STORE).getAll(range);
  await done(tx);
  return keys.result.map((k, i) => [String(k), values.result[i] as T]);
}
