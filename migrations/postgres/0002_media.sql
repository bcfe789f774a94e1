-- Media: uploads and their records, and the attachments each message declares.
-- The blobs themselves live in the blob store (filesystem or S3-compatible), addressed by
-- the SHA-256 of their ciphertext; see docs/media.md.

-- The media ids a message declares (Send.attachments). Members who can see the message
-- may download them; a deleted-for-everyone message declares nothing (emptied with the
-- tombstone) and a purged one is gone, so references end with the message.
ALTER TABLE messages ADD COLUMN attachments uuid[] NOT NULL DEFAULT '{}';
-- "Which messages reference this media": only rows that declare something are indexed.
CREATE INDEX messages_attachments ON messages USING gin (attachments) WHERE cardinality(attachments) > 0;

CREATE TABLE media (
    media_id  uuid PRIMARY KEY,
    owner     uuid NOT NULL,
    -- Declared length in bytes: counted against the owner's quota from creation on.
    length    bigint NOT NULL,
    -- SHA-256 of the complete ciphertext (the blob's address); NULL while uploading.
    digest    bytea,
    -- Compare-and-set version of the record.
    version   bigint NOT NULL,
    -- The whole record (MediaRecord, JSON): offset, chunks, hash state, marks.
    record    jsonb NOT NULL
);
CREATE INDEX media_by_owner ON media (owner);
CREATE INDEX media_by_digest ON media (digest) WHERE digest IS NOT NULL;
