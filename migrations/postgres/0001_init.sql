-- Switchboard schema for PostgreSQL, version 1.
--
-- The same layout as the embedded store and the Scylla schema: every table is keyed by
-- what its reads look up (partition key first), so the three backends are translations
-- of one model. Times are ms since the Unix epoch; seqs and cursors are non-negative
-- bigints. The guarantees of the store contract (ARCHITECTURE.md, "Store contract") are
-- held by the constraints below and by the transactions in src/store/postgres.rs.

CREATE TABLE users (
    user_id     uuid PRIMARY KEY,
    phone       text NOT NULL UNIQUE,
    created_ms  bigint NOT NULL
);

-- One-time registration codes, stored hashed; one per phone (a new one replaces it).
CREATE TABLE pending_codes (
    phone       text PRIMARY KEY,
    code_hash   bytea NOT NULL CHECK (length(code_hash) = 32),
    expires_ms  bigint NOT NULL,
    attempts    integer NOT NULL CHECK (attempts >= 0)
);

CREATE TABLE devices (
    device_id   uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    name        text NOT NULL,
    is_primary  boolean NOT NULL,
    -- SHA-256 of the bearer token; unique so a token names at most one device.
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_ms  bigint NOT NULL,
    revoked_ms  bigint
);
CREATE INDEX devices_by_user ON devices (user_id, created_ms, device_id);

CREATE TABLE conversations (
    conversation_id uuid PRIMARY KEY,
    -- 0 = direct (1:1), 1 = group.
    kind            smallint NOT NULL CHECK (kind IN (0, 1)),
    members         uuid[] NOT NULL,
    created_ms      bigint NOT NULL,
    -- Roles, settings and membership history of a group (NULL for 1:1), as JSON.
    group_state     jsonb,
    retention_secs  integer NOT NULL DEFAULT 0 CHECK (retention_secs >= 0),
    -- SHA-256 of the active invite link token: unique, so one token opens one group.
    invite_hash     bytea UNIQUE
);
CREATE INDEX conversations_with_retention ON conversations (conversation_id) WHERE retention_secs > 0;

-- Every conversation a user is or was a member of.
CREATE TABLE user_conversations (
    user_id         uuid NOT NULL,
    conversation_id uuid NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
);

-- The sequencer's fence: an append must carry last_seq + 1 and moves it in the same
-- transaction. Kept apart from the log so that purging old messages never loosens it.
-- A row at 0 is a fence created (and locked) before a conversation's first append.
CREATE TABLE last_seqs (
    conversation_id uuid PRIMARY KEY,
    last_seq        bigint NOT NULL CHECK (last_seq >= 0)
) WITH (fillfactor = 50);  -- updated on every batch: room on the page for HOT updates

-- The message log. The unique (conversation, sender, client id) is the idempotency key:
-- a retried send can never be stored twice.
CREATE TABLE messages (
    conversation_id  uuid NOT NULL,
    seq              bigint NOT NULL CHECK (seq > 0),
    sender_user_id   uuid NOT NULL,
    sender_device_id uuid NOT NULL,
    client_msg_id    text NOT NULL,
    server_time_ms   bigint NOT NULL,
    payload          bytea NOT NULL,
    event            bytea,
    -- 0 = normal, 1 = edit, 2 = reaction.
    content_kind     smallint NOT NULL CHECK (content_kind IN (0, 1, 2)),
    reference_seq    bigint NOT NULL,
    deleted          boolean NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, sender_user_id, client_msg_id)
);

-- A device's position in one conversation; both cursors only grow.
CREATE TABLE cursors (
    device_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    delivered       bigint NOT NULL,
    read            bigint NOT NULL,
    PRIMARY KEY (device_id, conversation_id)
) WITH (fillfactor = 70);

-- A member's position: the furthest any of the user's devices got.
CREATE TABLE member_cursors (
    conversation_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    delivered       bigint NOT NULL,
    read            bigint NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITH (fillfactor = 70);

-- When a member's cursor reached a seq (kind 0 delivered, 1 read): the first entry at or
-- above a seq answers "message info".
CREATE TABLE receipt_log (
    conversation_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    kind            smallint NOT NULL CHECK (kind IN (0, 1)),
    seq             bigint NOT NULL,
    at_ms           bigint NOT NULL,
    PRIMARY KEY (conversation_id, user_id, kind, seq)
);

CREATE TABLE last_seen (
    user_id uuid PRIMARY KEY,
    at_ms   bigint NOT NULL
);

CREATE TABLE push_tokens (
    user_id   uuid NOT NULL,
    device_id uuid NOT NULL,
    platform  text NOT NULL,
    token     text NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
