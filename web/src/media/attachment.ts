/**
 * Files as the Rust client encrypts them (src/attachment.rs, docs/media.md): a fresh
 * AES-256-GCM key per file, uploaded bytes `nonce (12) ‖ ciphertext ‖ tag (16)`, their
 * SHA-256 the digest the server checks; images get a small JPEG thumbnail. WebCrypto only.
 */

/** What an upload needs and what the message carries. */
export interface Sealed {
  key: Uint8Array;
  bytes: Uint8Array;
  sha256: Uint8Array;
}

async function digest(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as BufferSource));
}

/** Encrypts a file with a fresh key. */
export async function seal(plaintext: Uint8Array): Promise<Sealed> {
  const key = crypto.getRandomValues(new Uint8Array(32));
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const k = await crypto.subtle.importKey('raw', key as BufferSource, 'AES-GCM', false, ['encrypt']);
  const ciphertext = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce as BufferSource }, k, plaintext as BufferSource));
  const bytes = new Uint8Array(12 + ciphertext.length);
  bytes.set(nonce);
  bytes.set(ciphertext, 12);
  return { key, bytes, sha256: await digest(bytes) };
}

/** Checks the digest, then decrypts. */
export async function open(key: Uint8Array, sha256: Uint8Array, bytes: Uint8Array): Promise<Uint8Array> {
  const actual = await digest(bytes);
  if (actual.length !== sha256.length || actual.some((b, i) => b !== sha256[i])) throw new Error("the downloaded file's SHA-256 does not match the message");
  if (bytes.length < 28) throw new Error('the file does not decrypt with the message’s key');
  const k = await crypto.subtle.importKey('raw', key as BufferSource, 'AES-GCM', false, ['decrypt']);
  const plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: bytes.slice(0, 12) }, k, bytes.slice(12));
  return new Uint8Array(plain);
}

/** A small JPEG preview of an image (at most 64 px), or an empty array. */
export async function thumbnail(file: Blob): Promise<Uint8Array> {
  if (!file.type.startsWith('image/')) return new Uint8Array();
  try {
    const bitmap = await createImageBitmap(file);
    const scale = 64 / Math.max(bitmap.width, bitmap.height, 1);
    const canvas = new OffscreenCanvas(Math.max(1, Math.round(bitmap.width * scale)), Math.max(1, Math.round(bitmap.height * scale)));
    canvas.getContext('2d')?.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const blob = await canvas.convertToBlob({ type: 'image/jpeg', quality: 0.6 });
    return new Uint8Array(await blob.arrayBuffer());
  } catch {
    return new Uint8Array();
  }
}
