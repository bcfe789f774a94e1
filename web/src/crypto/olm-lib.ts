/**
 * libolm (the `@matrix-org/olm` WebAssembly build, wire-compatible with vodozemac), loaded
 * once, plus the binary encrypt/decrypt the SDK's formats need. libolm's JavaScript
 * wrappers take and return plaintext as UTF-8 strings, but Switchboard's plaintexts are
 * protobuf bytes (docs/e2ee.md), so these four calls go to libolm's own C functions
 * (`olm_encrypt`, `olm_decrypt`, `olm_group_encrypt`, `olm_group_decrypt`) with byte
 * buffers; everything else uses the wrappers.
 */
import Olm from '@matrix-org/olm';
import wasmUrl from '@matrix-org/olm/olm.wasm?url';

/** The parts of libolm's Emscripten module used here. */
interface OlmModule {
  HEAPU8: Uint8Array;
  _malloc(size: number): number;
  _free(ptr: number): void;
  _olm_error(): number;
  _olm_session_last_error(session: number): number;
  _olm_outbound_group_session_last_error(session: number): number;
  _olm_inbound_group_session_last_error(session: number): number;
  _olm_encrypt_message_type(session: number): number;
  _olm_encrypt_random_length(session: number): number;
  _olm_encrypt_message_length(session: number, plaintextLength: number): number;
  _olm_encrypt(session: number, plaintext: number, plaintextLength: number, random: number, randomLength: number, message: number, messageLength: number): number;
  _olm_decrypt_max_plaintext_length(session: number, type: number, message: number, messageLength: number): number;
  _olm_decrypt(session: number, type: number, message: number, messageLength: number, plaintext: number, max: number): number;
  _olm_group_encrypt_message_length(session: number, plaintextLength: number): number;
  _olm_group_encrypt(session: number, plaintext: number, plaintextLength: number, message: number, messageLength: number): number;
  _olm_group_decrypt_max_plaintext_length(session: number, message: number, messageLength: number): number;
  _olm_group_decrypt(session: number, message: number, messageLength: number, plaintext: number, max: number, index: number): number;
}

let module: OlmModule | null = null;
let loading: Promise<void> | null = null;

/** Loads libolm's WebAssembly (from this origin) once. */
export function loadOlm(): Promise<void> {
  // libolm reads its options from a global (its `init(opts)` assigns an undeclared
  // variable, which strict-mode modules refuse): set it, then call `init()` bare.
  (globalThis as { OLM_OPTIONS?: unknown }).OLM_OPTIONS = {
    locateFile: () => wasmUrl,
    // Emscripten hands post-run callbacks its module: the raw C functions live there.
    postRun: [(m: OlmModule) => (module = m)],
  };
  loading ??= Olm.init().then(() => {
    if (!module) throw new Error('libolm loaded without its module');
  });
  return loading;
}

function lib(): OlmModule {
  if (!module) throw new Error('libolm is not loaded');
  return module;
}

/** The C pointer of a libolm wrapper object (its one numeric own property). */
function pointer(object: object): number {
  const values = Object.values(object).filter((v): v is number => typeof v === 'number');
  if (values.length === 0) throw new Error('libolm object without a pointer');
  return values[values.length - 1];
}

function copyIn(m: OlmModule, bytes: Uint8Array): number {
  const ptr = m._malloc(Math.max(bytes.length, 1));
  m.HEAPU8.set(bytes, ptr);
  return ptr;
}

function copyOut(m: OlmModule, ptr: number, length: number): Uint8Array {
  return m.HEAPU8.slice(ptr, ptr + length);
}

function wipe(m: OlmModule, ptr: number, length: number): void {
  m.HEAPU8.fill(0, ptr, ptr + length);
  m._free(ptr);
}

function cString(m: OlmModule, ptr: number): string {
  const heap = m.HEAPU8;
  let end = ptr;
  while (heap[end] !== 0) end++;
  return new TextDecoder().decode(heap.slice(ptr, end));
}

function check(m: OlmModule, result: number, lastError: (p: number) => number, object: number): number {
  if (result === m._olm_error()) throw new Error(`OLM.${cString(m, lastError(object))}`);
  return result;
}

/** Olm: encrypts bytes; the message as libolm writes it (base64) and its type (0 pre-key, 1 normal). */
export function olmEncrypt(session: Olm.Session, plaintext: Uint8Array): { type: number; body: string } {
  const m = lib();
  const s = pointer(session);
  const err = (p: number) => m._olm_session_last_error(p);
  const type = check(m, m._olm_encrypt_message_type(s), err, s);
  const randomLength = check(m, m._olm_encrypt_random_length(s), err, s);
  const messageLength = check(m, m._olm_encrypt_message_length(s, plaintext.length), err, s);
  const random = copyIn(m, crypto.getRandomValues(new Uint8Array(randomLength)));
  const plain = copyIn(m, plaintext);
  const out = m._malloc(messageLength + 1);
  try {
    check(m, m._olm_encrypt(s, plain, plaintext.length, random, randomLength, out, messageLength), err, s);
    return { type, body: new TextDecoder().decode(copyOut(m, out, messageLength)) };
  } finally {
    wipe(m, random, randomLength);
    wipe(m, plain, plaintext.length);
    m._free(out);
  }
}

/** Olm: decrypts a message (base64, as libolm reads it) to bytes. */
export function olmDecrypt(session: Olm.Session, type: number, body: string): Uint8Array {
  const m = lib();
  const s = pointer(session);
  const err = (p: number) => m._olm_session_last_error(p);
  const ascii = new TextEncoder().encode(body);
  // libolm decodes the base64 in place: each call gets a fresh copy.
  let message = copyIn(m, ascii);
  const max = check(m, m._olm_decrypt_max_plaintext_length(s, type, message, ascii.length), err, s);
  m._free(message);
  message = copyIn(m, ascii);
  const plain = m._malloc(max + 1);
  try {
    const length = check(m, m._olm_decrypt(s, type, message, ascii.length, plain, max), err, s);
    return copyOut(m, plain, length);
  } finally {
    m._free(message);
    wipe(m, plain, max);
  }
}

/** Megolm: encrypts bytes with an outbound group session; the message in base64. */
export function megolmEncrypt(session: Olm.OutboundGroupSession, plaintext: Uint8Array): string {
  const m = lib();
  const s = pointer(session);
  const err = (p: number) => m._olm_outbound_group_session_last_error(p);
  const messageLength = check(m, m._olm_group_encrypt_message_length(s, plaintext.length), err, s);
  const plain = copyIn(m, plaintext);
  const out = m._malloc(messageLength + 1);
  try {
    check(m, m._olm_group_encrypt(s, plain, plaintext.length, out, messageLength), err, s);
    return new TextDecoder().decode(copyOut(m, out, messageLength));
  } finally {
    wipe(m, plain, plaintext.length);
    m._free(out);
  }
}

/** Megolm: decrypts a message (base64) with an inbound group session: bytes and the message index. */
export function megolmDecrypt(session: Olm.InboundGroupSession, body: string): { plaintext: Uint8Array; index: number } {
  const m = lib();
  const s = pointer(session);
  const err = (p: number) => m._olm_inbound_group_session_last_error(p);
  const ascii = new TextEncoder().encode(body);
  let message = copyIn(m, ascii);
  const max = check(m, m._olm_group_decrypt_max_plaintext_length(s, message, ascii.length), err, s);
  m._free(message);
  message = copyIn(m, ascii);
  const plain = m._malloc(max + 1);
  const index = m._malloc(4);
  try {
    const length = check(m, m._olm_group_decrypt(s, message, ascii.length, plain, max, index), err, s);
    const i = new DataView(m.HEAPU8.buffer, index, 4).getUint32(0, true);
    return { plaintext: copyOut(m, plain, length), index: i };
  } finally {
    m._free(message);
    m._free(index);
    wipe(m, plain, max);
  }
}

export { Olm };
