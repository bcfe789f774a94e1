-- Each user's own state of their conversations (conversation list: muted until, archived,
-- pinned, cleared up to) as JSON text, so that fields added by a newer version are skipped
-- by an older one during a rolling upgrade.
CREATE TABLE chat_states (
    user_id uuid NOT NULL,
    conversation_id uuid NOT NULL,
    state text NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
);
