-- Fixes from a review of the ledger core, subscription periods and events.

-- The carry-over cap a period's carry-over was settled at (the allotment it was capped to).
-- Credits that come back later to that period's lot (a void, an expired hold, the unspent
-- part of a capture, a reversal) count against it: what would take the carried credits above
-- it expires at once. NULL for periods settled before the cap was recorded.
ALTER TABLE subscription_periods
    ADD COLUMN carry_cap_micros bigint CHECK (carry_cap_micros >= 0);

-- Balance alerts judge the transaction, not each UPDATE: the available balance at the start
-- of the transaction against the one it commits. A write that gives credits back and expires
-- them at once (a void, a hold's expiry or a reversal into an expired lot) updates the
-- account twice, up then down, and leaves the available balance where it was: that is no
-- crossing. Every UPDATE that changes the available balance queues the deferred trigger
-- (rises too, so the transaction's first change is always queued); at commit the events run
-- in order, and the first of each account decides, once: its OLD row is the account as the
-- transaction found it, and the account's row as committed is read back. The accounts
-- already decided are remembered for the rest of the transaction in transaction-local
-- settings: 64 of them, an account's chosen by a hash of its id, so a transaction over
-- many accounts (a rollover chunk) searches short lists, and a session never holds more
-- than 64 settings whatever the number of accounts it served.
DROP TRIGGER events_available_dropped ON credits;
DROP FUNCTION cw_events_available_dropped();

CREATE FUNCTION cw_events_available_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bucket text := 'cw.alerts_decided_' || (hashtext(NEW.user_id) & 63)::text;
    seen text := coalesce(current_setting(bucket, true), '');
    mark text := chr(31) || NEW.user_id || chr(31);
    avail_before bigint := OLD.balance_micros - OLD.held_micros;
    avail_after bigint;
    at timestamptz;
    low bigint;
    has_rule boolean;
    r_rule auto_recharge_rules%ROWTYPE;
    this_month text;
    committed bigint;
BEGIN
    IF position(mark IN seen) > 0 THEN
        RETURN NULL;
    END IF;
    PERFORM set_config(bucket, seen || mark, true);
    SELECT c.balance_micros - c.held_micros, c.updated_at INTO avail_after, at
    FROM credits c WHERE c.user_id = NEW.user_id;
    IF NOT FOUND OR avail_after >= avail_before THEN
        RETURN NULL;
    END IF;
    -- One lookup for both: the account's threshold (or the default) and its enabled rule.
    SELECT coalesce(a.threshold_micros, s.balance_low_default_micros), r.user_id IS NOT NULL
    INTO low, has_rule
    FROM event_settings s LEFT JOIN balance_alerts a ON a.user_id = NEW.user_id
    LEFT JOIN auto_recharge_rules r ON r.user_id = NEW.user_id AND r.enabled;
    IF low > 0 AND avail_before >= low AND avail_after < low THEN
        PERFORM cw_emit_event(NEW.user_id, 'balance.low', at, jsonb_build_object(
            'threshold_micros', low, 'available_before_micros', avail_before,
            'available_micros', avail_after), false);
    END IF;
    IF avail_before > 0 AND avail_after <= 0 THEN
        PERFORM cw_emit_event(NEW.user_id, 'balance.depleted', at, jsonb_build_object(
            'available_before_micros', avail_before, 'available_micros', avail_after), false);
    END IF;
    IF NOT has_rule THEN
        RETURN NULL;
    END IF;
    SELECT * INTO r_rule FROM auto_recharge_rules r WHERE r.user_id = NEW.user_id AND r.enabled;
    IF NOT FOUND OR avail_after >= r_rule.threshold_micros
       OR (r_rule.retry_after IS NOT NULL AND r_rule.retry_after > at)
       OR EXISTS (SELECT 1 FROM auto_recharge_attempts x WHERE x.user_id = NEW.user_id
                  AND x.status IN ('pending', 'submitted')) THEN
        RETURN NULL;
    END IF;
    this_month := to_char(at AT TIME ZONE 'UTC', 'YYYY-MM');
    SELECT coalesce(sum(x.amount_minor), 0) INTO committed FROM auto_recharge_attempts x
    WHERE x.user_id = NEW.user_id AND x.month = this_month AND x.status <> 'failed';
    IF committed + r_rule.amount_minor > r_rule.monthly_limit_minor THEN
        RETURN NULL;
    END IF;
    INSERT INTO auto_recharge_attempts (user_id, status, month, price_id, credits_micros,
        amount_minor, currency, customer_id, payment_method_id, next_try_at, created_at,
        updated_at)
    VALUES (NEW.user_id, 'pending', this_month, r_rule.price_id, r_rule.credits_micros,
        r_rule.amount_minor, r_rule.currency, r_rule.customer_id, r_rule.payment_method_id,
        at, at, at);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER events_available_changed AFTER UPDATE ON credits
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.balance_micros - NEW.held_micros IS DISTINCT FROM OLD.balance_micros - OLD.held_micros)
    EXECUTE FUNCTION cw_events_available_changed();

-- One event per history row, each type named: credits.debited (captures too), .expired,
-- .reversed, .clawed_back, and credits.expiry_changed for an expiry_change row (a
-- subscription lot's expiry corrected: nothing was taken). No row type falls through to
-- another's event: a type without an event refuses the write, loudly, rather than mislabel it.
DROP TRIGGER events_transactions ON credit_transactions;
DROP FUNCTION cw_events_transaction();

CREATE FUNCTION cw_events_history_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event_type text := CASE NEW.type WHEN 'debit' THEN 'credits.debited'
                                     WHEN 'expire' THEN 'credits.expired'
                                     WHEN 'reversal' THEN 'credits.reversed'
                                     WHEN 'clawback' THEN 'credits.clawed_back'
                                     WHEN 'expiry_change' THEN 'credits.expiry_changed' END;
    body jsonb := jsonb_build_object(
        'transaction_id', NEW.transaction_id::text,
        'balance_after_micros', NEW.balance_after_micros,
        'source', NEW.source,
        'metadata', NEW.metadata);
BEGIN
    IF event_type IS NULL THEN
        RAISE EXCEPTION 'history rows of type % have no event type', NEW.type;
    END IF;
    IF NEW.type = 'expiry_change' THEN
        body := body || jsonb_build_object(
            'lot_id', NEW.metadata->>'lot_id',
            'expires_at', NEW.metadata->>'expires_at',
            'previous_expires_at', NEW.metadata->>'previous_expires_at');
    ELSE
        body := body || jsonb_build_object(
            'amount_micros', abs(NEW.amount_micros),
            'request_id', NEW.request_id,
            'agent_id', NEW.agent_id,
            'quantity', NEW.quantity,
            'session_id', NEW.session_id,
            'hold_id', NEW.hold_id,
            'related_transaction_id', NEW.related_transaction_id::text);
    END IF;
    PERFORM cw_emit_event(NEW.user_id, event_type, NEW.created_at, jsonb_strip_nulls(body), false);
    RETURN NULL;
END $$;

CREATE TRIGGER events_history_rows AFTER INSERT ON credit_transactions FOR EACH ROW
    WHEN (NEW.type <> 'grant') EXECUTE FUNCTION cw_events_history_row();
