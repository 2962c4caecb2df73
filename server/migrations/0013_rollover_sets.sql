-- The rollover, set-based: each chunk's history rows emit their events in one call.
--
-- A history row's event is written by a row trigger, one function call and two inserts per
-- row: for a chunk of the rollover (thousands of expire rows) that was the largest part of
-- its cost. The trigger's event (type and body) now lives in two functions, which set-based
-- writers use too: a transaction that sets creditwallet.history_events to 'statement'
-- (transaction-local) writes the events of its own history rows itself, in one
-- cw_emit_events call per statement, and the row trigger stands aside for it. Every other
-- writer is unchanged.

-- The event type of a history row (NULL: a grant, whose event is its lot's; or a type
-- without an event, which the trigger refuses).
CREATE FUNCTION cw_history_event_type(type text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE type WHEN 'debit' THEN 'credits.debited'
                     WHEN 'expire' THEN 'credits.expired'
                     WHEN 'reversal' THEN 'credits.reversed'
                     WHEN 'clawback' THEN 'credits.clawed_back'
                     WHEN 'expiry_change' THEN 'credits.expiry_changed' END
$$;

-- The body of a history row's event.
CREATE FUNCTION cw_history_event_body(
    type text, transaction_id bigint, amount_micros bigint, balance_after_micros bigint,
    source text, request_id text, agent_id text, quantity bigint, session_id text,
    hold_id uuid, related_transaction_id bigint, metadata jsonb
) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_strip_nulls(
        jsonb_build_object(
            'transaction_id', transaction_id::text,
            'balance_after_micros', balance_after_micros,
            'source', source,
            'metadata', metadata)
        || CASE WHEN type = 'expiry_change' THEN jsonb_build_object(
                   'lot_id', metadata->>'lot_id',
                   'expires_at', metadata->>'expires_at',
                   'previous_expires_at', metadata->>'previous_expires_at')
           ELSE jsonb_build_object(
                   'amount_micros', abs(amount_micros),
                   'request_id', request_id,
                   'agent_id', agent_id,
                   'quantity', quantity,
                   'session_id', session_id,
                   'hold_id', hold_id,
                   'related_transaction_id', related_transaction_id::text) END)
$$;

CREATE OR REPLACE FUNCTION cw_events_history_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event_type text := cw_history_event_type(NEW.type);
BEGIN
    IF event_type IS NULL THEN
        RAISE EXCEPTION 'history rows of type % have no event type', NEW.type;
    END IF;
    PERFORM cw_emit_event(NEW.user_id, event_type, NEW.created_at,
        cw_history_event_body(NEW.type, NEW.transaction_id, NEW.amount_micros,
            NEW.balance_after_micros, NEW.source, NEW.request_id, NEW.agent_id, NEW.quantity,
            NEW.session_id, NEW.hold_id, NEW.related_transaction_id, NEW.metadata),
        false);
    RETURN NULL;
END $$;

DROP TRIGGER events_history_rows ON credit_transactions;
CREATE TRIGGER events_history_rows AFTER INSERT ON credit_transactions FOR EACH ROW
    WHEN (NEW.type <> 'grant'
          AND current_setting('creditwallet.history_events', true) IS DISTINCT FROM 'statement')
    EXECUTE FUNCTION cw_events_history_row();
