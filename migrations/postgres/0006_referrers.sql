-- The edits and reactions that refer to a message: deleting it for everyone blanks them
-- in the same transaction (`UPDATE … WHERE reference_seq = $target`).
CREATE INDEX messages_by_reference ON messages (conversation_id, reference_seq) WHERE reference_seq > 0;
