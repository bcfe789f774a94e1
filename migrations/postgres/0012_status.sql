-- Status posts (WhatsApp's "Status"): each stored once under its poster, the payload
-- encrypted by the client (never read here), the audience the poster chose (0 contacts,
-- 1 only these users, 2 every contact but these) and when it expires. Every read filters
-- on `expires_ms > now`; the expiry sweep deletes expired posts, oldest first, by the
-- index on `expires_ms`, and their views with them (ON DELETE CASCADE).
CREATE TABLE status_posts (
    poster         uuid NOT NULL,
    post_id        uuid NOT NULL,
    payload        bytea NOT NULL,
    audience_kind  smallint NOT NULL,
    audience_users uuid[] NOT NULL,
    posted_ms      bigint NOT NULL,
    expires_ms     bigint NOT NULL,
    PRIMARY KEY (poster, post_id)
);
CREATE INDEX status_posts_by_expiry ON status_posts (expires_ms);
-- Who saw each post, and when first. The foreign key keeps a view from outliving its
-- post: a view marked while the post is deleted fails instead of being left behind.
CREATE TABLE status_views (
    poster  uuid NOT NULL,
    post_id uuid NOT NULL,
    viewer  uuid NOT NULL,
    seen_ms bigint NOT NULL,
    PRIMARY KEY (poster, post_id, viewer),
    FOREIGN KEY (poster, post_id) REFERENCES status_posts (poster, post_id) ON DELETE CASCADE
);
