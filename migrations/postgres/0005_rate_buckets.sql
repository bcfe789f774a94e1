-- Rate budgets shared by every node: token buckets (milli-tokens left at at_ms), taken
-- under a row lock (`SELECT … FOR UPDATE`), so two nodes never both take the last token.
CREATE TABLE rate_buckets (
    key          text PRIMARY KEY,
    tokens_milli bigint NOT NULL,
    at_ms        bigint NOT NULL
);
