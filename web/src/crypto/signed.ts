/**
 * The byte strings the key directory's signatures cover (docs/e2ee.md "What is signed";
 * `switchboard::cores::keys` on the server), and Ed25519 verification through libolm.
 */
import { concat, uuidBytes, utf8 } from '../util/bytes';
import { b64 } from '../util/bytes';
import { Olm } from './olm-lib';

const IDENTITY_LABEL = utf8('switchboard/device-keys/v1');
const ONE_TIME_KEY_LABEL = utf8('switchboard/one-time-key/v1');
const FALLBACK_KEY_LABEL = utf8('switchboard/fallback-key/v1');

/** label ‖ user (16) ‖ device (16) ‖ curve25519 (32) ‖ ed25519 (32). */
export function identitySignedBytes(user: string, device: string, curve: Uint8Array, ed: Uint8Array): Uint8Array {
  return concat(IDENTITY_LABEL, uuidBytes(user), uuidBytes(device), curve, ed);
}

/** label ‖ device (16) ‖ len(key id) (1) ‖ key id ‖ key (32). */
export function oneTimeKeySignedBytes(device: string, keyId: string, key: Uint8Array, fallback: boolean): Uint8Array {
  const id = utf8(keyId).slice(0, 64);
  return concat(fallback ? FALLBACK_KEY_LABEL : ONE_TIME_KEY_LABEL, uuidBytes(device), Uint8Array.of(id.length), id, key);
}

/** Strict Ed25519 verification; false for any malformed input. */
export function verify(ed25519: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  const utility = new Olm.Utility();
  try {
    utility.ed25519_verify(b64(ed25519), message, b64(signature));
    return true;
  } catch {
    return false;
  } finally {
    utility.free();
  }
}
