-- Key directory for end-to-end encryption (docs/e2ee.md): public keys only.

-- Identity keys of a device (Olm account: Curve25519 + Ed25519), signed by its Ed25519 key.
CREATE TABLE device_keys (
    device_id   uuid PRIMARY KEY REFERENCES devices (device_id),
    user_id     uuid NOT NULL,
    curve25519  bytea NOT NULL,
    ed25519     bytea NOT NULL,
    signature   bytea NOT NULL,
    uploaded_ms bigint NOT NULL
);
CREATE INDEX device_keys_by_user ON device_keys (user_id);

-- One-time keys. A claim sets claimed_ms (UPDATE … FOR UPDATE SKIP LOCKED … RETURNING) and
-- the row stays as spent, so a retried upload of the same key id is skipped instead of
-- putting a handed-out key back.
CREATE TABLE one_time_keys (
    device_id  uuid NOT NULL,
    key_id     text NOT NULL,
    public_key bytea NOT NULL,
    signature  bytea NOT NULL,
    claimed_ms bigint,
    PRIMARY KEY (device_id, key_id)
);
-- The claim's and the count's index: unclaimed keys only.
CREATE INDEX one_time_keys_unclaimed ON one_time_keys (device_id, key_id) WHERE claimed_ms IS NULL;

-- The fallback key of each device (handed out when no one-time key is left).
CREATE TABLE fallback_keys (
    device_id  uuid PRIMARY KEY,
    key_id     text NOT NULL,
    public_key bytea NOT NULL,
    signature  bytea NOT NULL
);
