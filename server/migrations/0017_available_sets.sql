-- Balance alerts judged for many accounts at once: a rollover chunk judges all of its
-- accounts in one call, instead of one deferred trigger call per account at COMMIT.
--
-- cw_judge_available(users, before) applies the rules of balance.low, balance.depleted and
-- auto-recharge (cw_events_available_changed, migration 0011) to many accounts: each one's
-- available balance at the start of the transaction (before) against the one it holds now,
-- in user_id order. A transaction that sets creditwallet.available_judged to 'statement'
-- (transaction-local) calls it itself, after its last write, for every account it locked;
-- its updates of credits then queue no trigger event. Every other writer keeps the trigger,
-- whose one-account statements are cheaper for one account than this function's (a debit
-- pays for them): the rules are written twice, and tests/billing/test_rollover_alerts.py
-- holds the two to the same decisions.

CREATE FUNCTION cw_judge_available(p_users text[], p_before bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    ev_users text[] := '{}';
    ev_types text[] := '{}';
    ev_at timestamptz[] := '{}';
    ev_bodies jsonb[] := '{}';
    re_users text[] := '{}';
    re_after bigint[] := '{}';
    re_at timestamptz[] := '{}';
BEGIN
    -- The accounts whose available balance went down, with their threshold (or the default)
    -- and whether they have an enabled auto-recharge rule; in user_id order. Each table is
    -- reached by one key lookup per account (LATERAL ... LIMIT 1 cannot become a hash join
    -- over a whole table, whatever the planner estimates for the arrays).
    FOR r IN
        SELECT u.user_id, u.before, c.after, c.at,
               coalesce(a.threshold_micros, s.balance_low_default_micros) AS low,
               rule.user_id IS NOT NULL AS has_rule
        FROM unnest(p_users, p_before) AS u (user_id, before)
        CROSS JOIN LATERAL (
            SELECT c.balance_micros - c.held_micros AS after, c.updated_at AS at
            FROM credits c WHERE c.user_id = u.user_id LIMIT 1) c
        LEFT JOIN LATERAL (
            SELECT a.threshold_micros FROM balance_alerts a
            WHERE a.user_id = u.user_id LIMIT 1) a ON true
        LEFT JOIN LATERAL (
            SELECT x.user_id FROM auto_recharge_rules x
            WHERE x.user_id = u.user_id AND x.enabled LIMIT 1) rule ON true
        CROSS JOIN event_settings s
        WHERE c.after < u.before
        ORDER BY u.user_id
    LOOP
        IF r.low > 0 AND r.before >= r.low AND r.after < r.low THEN
            ev_users := ev_users || r.user_id;
            ev_types := ev_types || 'balance.low'::text;
            ev_at := ev_at || r.at;
            ev_bodies := ev_bodies || jsonb_build_object('threshold_micros', r.low,
                'available_before_micros', r.before, 'available_micros', r.after);
        END IF;
        IF r.before > 0 AND r.after <= 0 THEN
            ev_users := ev_users || r.user_id;
            ev_types := ev_types || 'balance.depleted'::text;
            ev_at := ev_at || r.at;
            ev_bodies := ev_bodies || jsonb_build_object(
                'available_before_micros', r.before, 'available_micros', r.after);
        END IF;
        IF r.has_rule THEN
            re_users := re_users || r.user_id;
            re_after := re_after || r.after;
            re_at := re_at || r.at;
        END IF;
    END LOOP;
    PERFORM cw_emit_events(ev_users, ev_types, ev_at, ev_bodies, false);
    IF cardinality(re_users) = 0 THEN
        RETURN;
    END IF;
    -- An attempt when the rule's threshold is crossed, outside its backoff, with no attempt
    -- open and the month's committed attempts leaving room under its limit.
    INSERT INTO auto_recharge_attempts (user_id, status, month, price_id, credits_micros,
        amount_minor, currency, customer_id, payment_method_id, next_try_at, created_at,
        updated_at)
    SELECT x.user_id, 'pending', m.month, rule.price_id, rule.credits_micros,
           rule.amount_minor, rule.currency, rule.customer_id, rule.payment_method_id,
           x.at, x.at, x.at
    FROM unnest(re_users, re_after, re_at) AS x (user_id, after, at)
    CROSS JOIN LATERAL (
        SELECT * FROM auto_recharge_rules ar
        WHERE ar.user_id = x.user_id AND ar.enabled LIMIT 1) rule
    CROSS JOIN LATERAL (SELECT to_char(x.at AT TIME ZONE 'UTC', 'YYYY-MM') AS month) m
    LEFT JOIN LATERAL (
        SELECT true AS open FROM auto_recharge_attempts o
        WHERE o.user_id = x.user_id AND o.status IN ('pending', 'submitted') LIMIT 1) o ON true
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(o.amount_minor), 0) AS committed FROM auto_recharge_attempts o
        WHERE o.user_id = x.user_id AND o.month = m.month AND o.status <> 'failed') spent
    WHERE x.after < rule.threshold_micros
      AND (rule.retry_after IS NULL OR rule.retry_after <= x.at)
      AND o.open IS NULL
      AND spent.committed + rule.amount_minor <= rule.monthly_limit_minor
    ORDER BY x.user_id;
END $$;

DROP TRIGGER events_available_changed ON credits;
CREATE CONSTRAINT TRIGGER events_available_changed AFTER UPDATE ON credits
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.balance_micros - NEW.held_micros IS DISTINCT FROM OLD.balance_micros - OLD.held_micros
          AND current_setting('creditwallet.available_judged', true) IS DISTINCT FROM 'statement')
    EXECUTE FUNCTION cw_events_available_changed();
