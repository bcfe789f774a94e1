-- Profiles (display name, about, photo renditions) as JSON text, so that fields added by a
-- newer version are skipped by an older one during a rolling upgrade.
CREATE TABLE profiles (
    user_id uuid PRIMARY KEY,
    profile text NOT NULL
);
