-- The events of history rows name the team member a debit (or a capture) was charged to.
--
-- Migration 0014 records the member on each history row; the row trigger's event body now
-- carries it too, so a consumer attributes spend to members without reading the history. Rows
-- with no member (every row of an account without members, expiries, grants) are unchanged:
-- the key is left out, as every absent field of an event body is.

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
            NEW.session_id, NEW.hold_id, NEW.related_transaction_id, NEW.metadata)
        || jsonb_strip_nulls(jsonb_build_object('member_id', NEW.member_id)),
        false);
    RETURN NULL;
END $$;
