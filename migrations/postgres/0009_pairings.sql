-- Device pairing: a new device waiting for a primary's approval (secrets stored hashed);
-- deleted when claimed, and by the expiry sweep once expired.
CREATE TABLE pairings (
    code_hash   bytea PRIMARY KEY,
    claim_hash  bytea NOT NULL,
    device_name text NOT NULL,
    expires_ms  bigint NOT NULL,
    approved_by uuid,
    approved_device uuid
);
CREATE INDEX pairings_by_expiry ON pairings (expires_ms);
