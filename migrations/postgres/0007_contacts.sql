-- Contact lists: the numbers (E.164) each user's devices submitted to contact discovery.
-- Re-checking a number already here is free of the discovery budget, and "my contacts"
-- privacy settings are decided from it. Keyed by owner first: one owner's list is one
-- index range.
CREATE TABLE contacts (
    owner uuid NOT NULL,
    phone text NOT NULL,
    PRIMARY KEY (owner, phone)
);
