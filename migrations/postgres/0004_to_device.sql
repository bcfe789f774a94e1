-- To-device messages and device-list notices (docs/e2ee.md): opaque Olm ciphertexts queued
-- per receiving device until it acknowledges them.

-- Each device's queue: the last position given out and the highest acknowledged. A send
-- locks the rows of its targets (in device id order) to allocate positions.
CREATE TABLE to_device_queues (
    device_id     uuid PRIMARY KEY,
    last_position bigint NOT NULL,
    acked         bigint NOT NULL
);

-- Queued entries, deleted up to a position when the device acknowledges it.
CREATE TABLE to_device_messages (
    device_id        uuid NOT NULL,
    position         bigint NOT NULL,
    sender_user_id   uuid NOT NULL,
    sender_device_id uuid NOT NULL,
    payload          bytea NOT NULL,
    sent_ms          bigint NOT NULL,
    PRIMARY KEY (device_id, position)
);

-- Client ids of sends (idempotency for a day), pruned by time.
CREATE TABLE to_device_sends (
    sender_device_id uuid NOT NULL,
    client_id        text NOT NULL,
    sent_ms          bigint NOT NULL,
    PRIMARY KEY (sender_device_id, client_id)
);
CREATE INDEX to_device_sends_by_time ON to_device_sends (sent_ms);

-- Users whose device list changed, per device that has not acknowledged hearing it.
CREATE TABLE device_list_notices (
    device_id  uuid NOT NULL,
    user_id    uuid NOT NULL,
    changed_ms bigint NOT NULL,
    PRIMARY KEY (device_id, user_id)
);
