/** The media service over HTTP: a tus 1.0 upload of encrypted bytes (declaring their SHA-256) and an authorised download. */

const TUS = { 'Tus-Resumable': '1.0.0' };
const CHUNK = 4 * 1024 * 1024;

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Uploads `bytes` (already encrypted); the media id. */
export async function upload(token: string, bytes: Uint8Array, sha256: Uint8Array): Promise<string> {
  const created = await fetch('/v1/media', {
    method: 'POST',
    headers: { ...TUS, Authorization: `Bearer ${token}`, 'Upload-Length': String(bytes.length), 'Upload-Metadata': `sha256 ${btoa(hex(sha256))}` },
  });
  if (created.status !== 201) throw new Error(`upload refused: HTTP ${created.status}`);
  const id = ((await created.json()) as { media_id: string }).media_id;
  let offset = 0;
  while (offset < bytes.length) {
    const chunk = bytes.slice(offset, offset + CHUNK);
    const patched = await fetch(`/v1/media/${id}`, {
      method: 'PATCH',
      headers: { ...TUS, Authorization: `Bearer ${token}`, 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' },
      body: chunk,
    });
    if (patched.status !== 204) throw new Error(`upload failed at ${offset}: HTTP ${patched.status}`);
    offset = Number(patched.headers.get('Upload-Offset') ?? offset + chunk.length);
  }
  return id;
}

/** Downloads a media's (encrypted) bytes. */
export async function download(token: string, id: string): Promise<Uint8Array> {
  const response = await fetch(`/v1/media/${id}`, { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) throw new Error(`download refused: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}
