-- The rollover, set-based: each chunk's history rows emit their events in one call.
--
-- A history row's event was written by a row trigger, one function call and two inserts per
-- row: for a chunk of the rollover (thousands of expire rows) that was the largest part of
-- its cost. The trigger's event body now lives in one function, which set-based writers use
-- too: a transaction that sets creditwallet.history_events to 'statement' (SET LOCAL) writes
-- the events of its own history rows itself, in one cw_emit_events call per statement, and
-- the row trigger stands aside for it. Every other writer is unchanged.

-- The body of a history row's event (as the row trigger of 0007 built it).
CREATE FUNCTION cw_transaction_event_body(
    transaction_id bigint, amount_micros bigint, balance_after_micros bigint, source text,
    request_id text, agent_id text, quantity bigint, session_id text, hold_id uuid,
    related_transaction_id bigint, metadata jsonb
) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'transaction_id', transaction_id::text,
        'amount_micros', abs(amount_micros),
        'balance_after_micros', balance_after_micros,
        'source', source,
        'request_id', request_id,
        'agent_id', agent_id,
        'quantity', quantity,
        'session_id', session_id,
        'hold_id', hold_id,
        'related_transaction_id', related_transaction_id::text,
        'metadata', metadata))
$$;

CREATE OR REPLACE FUNCTION cw_events_transaction() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cw_emit_event(NEW.user_id,
        CASE NEW.type WHEN 'debit' THEN 'credits.debited'
                      WHEN 'expire' THEN 'credits.expired'
                      WHEN 'reversal' THEN 'credits.reversed'
                      ELSE 'credits.clawed_back' END,
        NEW.created_at,
        cw_transaction_event_body(NEW.transaction_id, NEW.amount_micros,
            NEW.balance_after_micros, NEW.source, NEW.request_id, NEW.agent_id, NEW.quantity,
            NEW.session_id, NEW.hold_id, NEW.related_transaction_id, NEW.metadata),
        false);
    RETURN NULL;
END $$;

DROP TRIGGER events_transactions ON credit_transactions;
CREATE TRIGGER events_transactions AFTER INSERT ON credit_transactions FOR EACH ROW
    WHEN (NEW.type <> 'grant'
          AND current_setting('creditwallet.history_events', true) IS DISTINCT FROM 'statement')
    EXECUTE FUNCTION cw_events_transaction();
