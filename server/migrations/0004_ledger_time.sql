-- The account's own clock and its newest history row; idempotency records keep the ledger's
-- typed result (JSON) instead of a serialised protobuf reply.
--
-- credits.updated_at is the time of the account's last write. Every write takes its time
-- after locking the account and never earlier than updated_at, so one account's history never
-- goes back in time, whatever the clocks of the replicas do. last_transaction_id is the newest
-- history row of the account: a reply stored under a request_id names it, and VerifyLedger
-- checks that the reply's balance is the history's balance after that row.

ALTER TABLE credits ADD COLUMN last_transaction_id bigint;
UPDATE credits c SET last_transaction_id =
    (SELECT max(transaction_id) FROM credit_transactions t WHERE t.user_id = c.user_id);

ALTER TABLE idempotency_records
    ADD COLUMN result jsonb,
    DROP COLUMN response,
    DROP COLUMN error_code;

-- The database transaction that wrote each history row and each idempotency record, so that
-- VerifyLedger can tell a reply's request from the next one: a reply's figures must be the
-- account's at the end of its request.
ALTER TABLE credit_transactions ADD COLUMN xact_id xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE idempotency_records ADD COLUMN xact_id xid8 NOT NULL DEFAULT pg_current_xact_id();
