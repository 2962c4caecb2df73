-- Subscription periods as the provider defines them, and a rollover driven by what is due.
--
-- Each paid period keeps the billing schedule (anchor, interval, count) its lot's expiry was
-- computed from, where the provider cut it short (an anchor reset), and the expiry its lot
-- was given. A later change of that expiry is a history row of its own ('expiry_change').
-- The rollover finds its work by index: accounts whose next expiry has passed, and granted
-- periods that ended and whose carry-over is not settled yet.

-- The schedule as last reported (state: the newest event wins, like the status).
ALTER TABLE subscriptions
    ADD COLUMN billing_cycle_anchor   timestamptz,
    ADD COLUMN billing_interval       text CHECK (billing_interval IN ('day', 'week', 'month', 'year')),
    ADD COLUMN billing_interval_count integer CHECK (billing_interval_count > 0),
    ADD CONSTRAINT subscriptions_schedule_whole CHECK (
        (billing_cycle_anchor IS NULL) = (billing_interval IS NULL)
        AND (billing_interval IS NULL) = (billing_interval_count IS NULL));

ALTER TABLE subscription_periods
    -- The schedule the lot's expiry follows: as reported for this period ('reported'), as
    -- last recorded for the subscription ('recorded'), implied by the period ('inferred'),
    -- or unknown for periods recorded before schedules were ('legacy', all NULL).
    ADD COLUMN billing_cycle_anchor   timestamptz,
    ADD COLUMN billing_interval       text CHECK (billing_interval IN ('day', 'week', 'month', 'year')),
    ADD COLUMN billing_interval_count integer CHECK (billing_interval_count > 0),
    ADD COLUMN schedule_source        text NOT NULL DEFAULT 'legacy'
        CHECK (schedule_source IN ('reported', 'recorded', 'inferred', 'legacy')),
    -- Where a later paid period starting inside this one cut it short (e.g. an anchor reset).
    ADD COLUMN ended_at               timestamptz,
    -- The expiry given to the period's lot (NULL until granted).
    ADD COLUMN expires_at             timestamptz,
    -- Set when a later, longer expiry was known only after the lot had already expired:
    -- an expired lot is never revived.
    ADD COLUMN expiry_frozen_at       timestamptz,
    -- When the carry-over cap of the credits carried past this period's end was applied.
    ADD COLUMN carry_settled_at       timestamptz,
    ADD CONSTRAINT subscription_periods_schedule_whole CHECK (
        (billing_cycle_anchor IS NULL) = (billing_interval IS NULL)
        AND (billing_interval IS NULL) = (billing_interval_count IS NULL)
        AND (billing_interval IS NULL) = (schedule_source = 'legacy')),
    ADD CONSTRAINT subscription_periods_cut_inside CHECK (
        ended_at IS NULL OR (ended_at > period_start AND ended_at < period_end));

UPDATE subscription_periods p SET expires_at = l.expires_at
FROM credit_lots l WHERE l.user_id = p.user_id AND l.lot_id = p.lot_id;

-- The end of the period after the one ending at period_end on the schedule (anchor, unit,
-- count): boundary n + 1 where boundary n is period_end, or NULL when period_end is not a
-- boundary. Each boundary is counted from the anchor, in UTC; month and year steps are
-- PostgreSQL's `timestamp + n months`, which clamps the day to the month's length. VerifyLedger
-- uses it, independently of the server's own arithmetic.
CREATE FUNCTION billing_period_following(
    anchor timestamptz, unit text, count integer, period_end timestamptz
) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    WITH v AS (
        SELECT anchor AT TIME ZONE 'UTC' AS a, period_end AT TIME ZONE 'UTC' AS e,
               CASE unit WHEN 'month' THEN count WHEN 'year' THEN 12 * count END AS step_months,
               CASE unit WHEN 'day' THEN count WHEN 'week' THEN 7 * count END AS step_days
    ), m AS (
        SELECT v.*, ((extract(year FROM e) - extract(year FROM a)) * 12
                     + extract(month FROM e) - extract(month FROM a))::int AS months
        FROM v
    )
    SELECT CASE
        WHEN step_months IS NOT NULL AND months >= 0 AND months % step_months = 0
             AND a + make_interval(months => months) = e
            THEN (a + make_interval(months => months + step_months)) AT TIME ZONE 'UTC'
        WHEN step_days IS NOT NULL AND e >= a
             AND extract(epoch FROM e - a) % (step_days * 86400) = 0
            THEN (e + make_interval(days => step_days)) AT TIME ZONE 'UTC'
    END FROM m
$$;

-- A lot's expiry moving (amount 0) is part of the account's history.
ALTER TABLE credit_transactions DROP CONSTRAINT credit_transactions_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_type_check CHECK (type IN
    ('grant', 'debit', 'expire', 'reversal', 'clawback', 'expiry_change'));

-- The rollover's work lists.
CREATE INDEX credits_next_expiry ON credits (next_expiry_at, user_id)
    WHERE next_expiry_at IS NOT NULL;
CREATE INDEX subscription_periods_carry_due
    ON subscription_periods ((coalesce(ended_at, period_end)), subscription_id, period_start)
    WHERE carry_settled_at IS NULL AND lot_id IS NOT NULL;

-- Accounts are no longer claimed per month: expiries and carry-overs are each recorded once
-- by their own state (a lot's remaining credits, a period's carry_settled_at).
DROP TABLE rollover_accounts;

-- A run's counts are added chunk by chunk, in each chunk's transaction: the month's progress
-- is the sum over its runs (committed work, whichever run did it) against what is still due.
ALTER TABLE rollover_runs
    ADD COLUMN accounts_settled      bigint NOT NULL DEFAULT 0,
    ADD COLUMN periods_settled       bigint NOT NULL DEFAULT 0,
    ADD COLUMN accounts_capped       bigint NOT NULL DEFAULT 0,
    ADD COLUMN credits_capped_micros bigint NOT NULL DEFAULT 0;
