-- Privacy settings (JSON text, so that fields added by a newer version are skipped by an
-- older one during a rolling upgrade) and blocks: who blocked whom since when, indexed
-- both ways (a user's block list; who blocked a user).
CREATE TABLE privacy (
    user_id  uuid PRIMARY KEY,
    settings text NOT NULL
);
CREATE TABLE blocks (
    user_id uuid NOT NULL,
    target  uuid NOT NULL,
    at_ms   bigint NOT NULL,
    PRIMARY KEY (user_id, target)
);
CREATE INDEX blocks_by_target ON blocks (target);
