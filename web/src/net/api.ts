/** The HTTP calls of sign-up: a one-time code for a phone number, then the device's token. */

/** What `verify` returns: this device's identity and bearer token. */
export interface Profile {
  phone: string;
  userId: string;
  deviceId: string;
  token: string;
}

async function post<T>(path: string, body: unknown): Promise<T> {
  const response = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await response.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // not JSON
  }
  if (!response.ok) {
    const error = (parsed as { error?: string; message?: string } | null) ?? {};
    throw new Error(error.message ?? error.error ?? `HTTP ${response.status}`);
  }
  return parsed as T;
}

/** Asks for a code; a development server returns it (`dev_code`). */
export async function register(phone: string): Promise<string | null> {
  const answer = await post<{ dev_code?: string | null }>('/v1/accounts/register', { phone });
  return answer?.dev_code ?? null;
}

/** Trades the code for this device's token. */
export async function verify(phone: string, code: string): Promise<Profile> {
  const answer = await post<{ user_id: string; device_id: string; token: string }>('/v1/accounts/verify', { phone, code, device_name: 'Web browser' });
  return { phone, userId: answer.user_id, deviceId: answer.device_id, token: answer.token };
}

/** A user's profile as the caller may see it (`name` is empty until set). */
export interface UserProfile {
  user_id: string;
  name: string;
  about?: string;
}

async function authed<T>(token: string, method: string, path: string, body?: unknown): Promise<T> {
  const response = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const parsed = (await response.json().catch(() => null)) as unknown;
  if (!response.ok) {
    const error = (parsed as { error?: string; message?: string } | null) ?? {};
    throw new Error(error.message ?? error.error ?? `HTTP ${response.status}`);
  }
  return parsed as T;
}

/** `GET /v1/profiles/{user_id}`. */
export function fetchProfile(token: string, userId: string): Promise<UserProfile> {
  return authed<UserProfile>(token, 'GET', `/v1/profiles/${userId}`);
}

/** `PATCH /v1/profile` with a new name; the profile after the change. */
export function setName(token: string, name: string): Promise<UserProfile> {
  return authed<UserProfile>(token, 'PATCH', '/v1/profile', { name });
}
