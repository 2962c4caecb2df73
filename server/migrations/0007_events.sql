-- Events out: the transactional outbox, what delivers it, balance alerts and auto-recharge.
--
-- The outbox is written by triggers on the ledger's own tables, in the transaction that
-- changes them, so an event exists if and only if its change committed. Every event of an
-- account gets the next number of that account's sequence (event_accounts.last_seq): the
-- row is locked by the writer until it commits, so the numbers of an account have no gap
-- and follow its commit order. Writers of ledger tables already hold the account's credits
-- row lock (the ledger's rule); every other writer takes it here first, so the two locks are
-- always taken in the same order.
--
-- Triggers on tables that a fused statement (several data-modifying CTEs) writes read only
-- their own rows (OLD/NEW, transition tables): what other arms of the same statement wrote
-- is not specified to be visible to them. Balance alerts are a deferred constraint trigger:
-- they fire at commit, so an account's alerts follow the other events of the transaction.

-- Per-account event sequence.
CREATE TABLE event_accounts (
    user_id  text PRIMARY KEY,
    last_seq bigint NOT NULL CHECK (last_seq > 0)
);

CREATE TABLE events (
    user_id     text NOT NULL,
    seq         bigint NOT NULL CHECK (seq > 0),
    event_id    text NOT NULL,
    type        text NOT NULL,
    -- The ledger's time of the change (the changed row's own timestamp).
    occurred_at timestamptz NOT NULL,
    body        jsonb NOT NULL,
    -- The global stream position, assigned after commit by the sequencer (one writer at a
    -- time, in (user_id, seq) order per pass): a committed prefix, so a cursor never skips.
    position    bigint,
    PRIMARY KEY (user_id, seq)
);
CREATE UNIQUE INDEX events_event_id ON events (event_id);
CREATE UNIQUE INDEX events_position ON events (position) WHERE position IS NOT NULL;
CREATE INDEX events_unsequenced ON events (user_id, seq) WHERE position IS NULL;

-- The sequencer's singleton: its row lock makes passes one at a time across replicas.
CREATE TABLE event_sequencer (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_position bigint NOT NULL DEFAULT 0
);
INSERT INTO event_sequencer DEFAULT VALUES;

-- Settings the server writes from its configuration at start-up (triggers read them).
CREATE TABLE event_settings (
    singleton                  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    balance_low_default_micros bigint NOT NULL DEFAULT 0 CHECK (balance_low_default_micros >= 0)
);
INSERT INTO event_settings DEFAULT VALUES;

-- Per-account balance.low threshold (0: no balance.low for the account).
CREATE TABLE balance_alerts (
    user_id          text PRIMARY KEY,
    threshold_micros bigint NOT NULL CHECK (threshold_micros >= 0),
    updated_at       timestamptz NOT NULL
);

-- credits.expiring: one notice per lot, ever (written by the periodic scan).
CREATE TABLE lot_expiry_notices (
    user_id          text NOT NULL,
    lot_id           bigint NOT NULL,
    source           text NOT NULL,
    remaining_micros bigint NOT NULL,
    expires_at       timestamptz NOT NULL,
    notified_at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, lot_id)
);
CREATE INDEX credit_lots_expiring ON credit_lots (expires_at)
    WHERE remaining_micros > 0 AND expires_at IS NOT NULL;

-- Auto-recharge: one rule per account, attempts recorded by the alert trigger.
CREATE TABLE auto_recharge_rules (
    user_id              text PRIMARY KEY,
    enabled              boolean NOT NULL,
    threshold_micros     bigint NOT NULL CHECK (threshold_micros > 0),
    price_id             text NOT NULL,
    credits_micros       bigint NOT NULL CHECK (credits_micros > 0),
    amount_minor         bigint NOT NULL CHECK (amount_minor > 0),
    currency             text NOT NULL,
    customer_id          text NOT NULL,
    payment_method_id    text NOT NULL,
    monthly_limit_minor  bigint NOT NULL CHECK (monthly_limit_minor >= 0),
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    -- After a failure no attempt is recorded before this time (the backoff).
    retry_after          timestamptz,
    disabled_reason      text,
    updated_at           timestamptz NOT NULL
);

CREATE TABLE auto_recharge_attempts (
    attempt_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           text NOT NULL,
    -- pending: no PaymentIntent known yet; submitted: created, its webhook awaited.
    status            text NOT NULL CHECK (status IN ('pending', 'submitted', 'succeeded', 'failed')),
    month             text NOT NULL,
    price_id          text NOT NULL,
    credits_micros    bigint NOT NULL CHECK (credits_micros > 0),
    amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
    currency          text NOT NULL,
    customer_id       text NOT NULL,
    payment_method_id text NOT NULL,
    payment_intent_id text,
    tries             integer NOT NULL DEFAULT 0,
    next_try_at       timestamptz NOT NULL,
    failure_code      text,
    failure_message   text,
    transaction_id    bigint,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
-- At most one open attempt per account, whatever runs at once.
CREATE UNIQUE INDEX auto_recharge_attempts_open ON auto_recharge_attempts (user_id)
    WHERE status IN ('pending', 'submitted');
CREATE INDEX auto_recharge_attempts_month ON auto_recharge_attempts (user_id, month);
CREATE INDEX auto_recharge_attempts_due ON auto_recharge_attempts (next_try_at)
    WHERE status = 'pending';
CREATE UNIQUE INDEX auto_recharge_attempts_intent ON auto_recharge_attempts (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;

-- Webhook delivery: endpoints (from configuration), one lane per (endpoint, account) whose
-- due_at says when its next delivery may be tried (NULL: nothing pending), and one row per
-- (endpoint, event).
CREATE TABLE webhook_endpoints (
    endpoint_id          text PRIMARY KEY,
    url                  text NOT NULL,
    types                text[] NOT NULL DEFAULT '{}',
    active               boolean NOT NULL DEFAULT true,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    last_error           text,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    updated_at           timestamptz NOT NULL
);

CREATE TABLE webhook_lanes (
    endpoint_id text NOT NULL,
    user_id     text NOT NULL,
    due_at      timestamptz,
    PRIMARY KEY (endpoint_id, user_id)
);
CREATE INDEX webhook_lanes_due ON webhook_lanes (due_at) WHERE due_at IS NOT NULL;

CREATE TABLE webhook_deliveries (
    endpoint_id      text NOT NULL,
    user_id          text NOT NULL,
    seq              bigint NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    first_attempt_at timestamptz,
    last_attempt_at  timestamptz,
    next_attempt_at  timestamptz NOT NULL,
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    PRIMARY KEY (endpoint_id, user_id, seq)
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, user_id, seq)
    WHERE status = 'pending';


-- The one writer of events. Arrays in order; each account's events get consecutive numbers
-- in that order. lock_accounts: take the accounts' credits row locks first (callers that
-- are not ledger writers), in user_id order.
CREATE FUNCTION cw_emit_events(users text[], types text[], occurred timestamptz[], bodies jsonb[],
                               lock_accounts boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    next_seq bigint;
BEGIN
    IF cardinality(users) IS NULL OR cardinality(users) = 0 THEN
        RETURN;
    END IF;
    IF lock_accounts THEN
        PERFORM 1 FROM credits WHERE user_id = ANY (users) ORDER BY user_id FOR UPDATE;
    END IF;
    IF cardinality(users) = 1 THEN  -- the common case (a debit): two plain statements
        INSERT INTO event_accounts AS ea (user_id, last_seq) VALUES (users[1], 1)
        ON CONFLICT (user_id) DO UPDATE SET last_seq = ea.last_seq + 1
        RETURNING ea.last_seq INTO next_seq;
        INSERT INTO events (user_id, seq, event_id, type, occurred_at, body)
        VALUES (users[1], next_seq, 'evt_' || replace(gen_random_uuid()::text, '-', ''),
                types[1], occurred[1], bodies[1]);
        RETURN;
    END IF;
    WITH e AS (
        SELECT u, t, a, b, ord,
               row_number() OVER (PARTITION BY u ORDER BY ord) AS k,
               count(*) OVER (PARTITION BY u) AS n
        FROM unnest(users, types, occurred, bodies) WITH ORDINALITY AS x (u, t, a, b, ord)
    ), counts AS (
        SELECT DISTINCT u, n FROM e
    ), bumped AS (
        INSERT INTO event_accounts AS ea (user_id, last_seq)
        SELECT u, n FROM counts ORDER BY u
        ON CONFLICT (user_id) DO UPDATE SET last_seq = ea.last_seq + EXCLUDED.last_seq
        RETURNING ea.user_id, ea.last_seq
    )
    INSERT INTO events (user_id, seq, event_id, type, occurred_at, body)
    SELECT e.u, b.last_seq - e.n + e.k, 'evt_' || replace(gen_random_uuid()::text, '-', ''),
           e.t, e.a, e.b
    FROM e JOIN bumped b ON b.user_id = e.u;
END $$;

CREATE FUNCTION cw_emit_event(user_id text, type text, occurred timestamptz, body jsonb,
                              lock_accounts boolean)
RETURNS void LANGUAGE sql AS $$
    SELECT cw_emit_events(ARRAY[user_id], ARRAY[type], ARRAY[occurred], ARRAY[body], lock_accounts)
$$;


-- credits.debited (captures too), .expired, .reversed, .clawed_back: one per history row.
-- A row trigger: measured cheaper on the debit path (one row per statement) than a
-- statement trigger with its transition table.
CREATE FUNCTION cw_events_transaction() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cw_emit_event(NEW.user_id,
        CASE NEW.type WHEN 'debit' THEN 'credits.debited'
                      WHEN 'expire' THEN 'credits.expired'
                      WHEN 'reversal' THEN 'credits.reversed'
                      ELSE 'credits.clawed_back' END,
        NEW.created_at,
        jsonb_strip_nulls(jsonb_build_object(
            'transaction_id', NEW.transaction_id::text,
            'amount_micros', abs(NEW.amount_micros),
            'balance_after_micros', NEW.balance_after_micros,
            'source', NEW.source,
            'request_id', NEW.request_id,
            'agent_id', NEW.agent_id,
            'quantity', NEW.quantity,
            'session_id', NEW.session_id,
            'hold_id', NEW.hold_id,
            'related_transaction_id', NEW.related_transaction_id::text,
            'metadata', NEW.metadata)),
        false);
    RETURN NULL;
END $$;

CREATE TRIGGER events_transactions AFTER INSERT ON credit_transactions FOR EACH ROW
    WHEN (NEW.type <> 'grant') EXECUTE FUNCTION cw_events_transaction();

-- credits.granted: one per lot (a grant always creates its lot).
CREATE FUNCTION cw_events_lots() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    u text[]; t text[]; a timestamptz[]; b jsonb[];
BEGIN
    SELECT array_agg(r.user_id ORDER BY r.user_id, r.lot_id),
           array_agg('credits.granted'::text ORDER BY r.user_id, r.lot_id),
           array_agg(r.granted_at ORDER BY r.user_id, r.lot_id),
           array_agg(jsonb_strip_nulls(jsonb_build_object(
               'transaction_id', r.transaction_id::text,
               'lot_id', r.lot_id::text,
               'source', r.source,
               'amount_micros', r.amount_micros,
               'debt_paid_micros', r.amount_micros - r.remaining_micros,
               'expires_at', r.expires_at,
               'grant_key', r.grant_key)) ORDER BY r.user_id, r.lot_id)
    INTO u, t, a, b
    FROM new_rows r;
    PERFORM cw_emit_events(u, t, a, b, false);
    RETURN NULL;
END $$;

CREATE TRIGGER events_lots AFTER INSERT ON credit_lots
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cw_events_lots();

-- hold.created
CREATE FUNCTION cw_events_holds_created() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    u text[]; t text[]; a timestamptz[]; b jsonb[];
BEGIN
    SELECT array_agg(r.user_id ORDER BY r.user_id, r.created_at, r.hold_id),
           array_agg('hold.created'::text ORDER BY r.user_id, r.created_at, r.hold_id),
           array_agg(r.created_at ORDER BY r.user_id, r.created_at, r.hold_id),
           array_agg(jsonb_strip_nulls(jsonb_build_object(
               'hold_id', r.hold_id,
               'amount_micros', r.amount_micros,
               'expires_at', r.expires_at,
               'request_id', r.request_id,
               'agent_id', r.agent_id,
               'quantity', r.quantity,
               'session_id', r.session_id,
               'metadata', r.metadata)) ORDER BY r.user_id, r.created_at, r.hold_id)
    INTO u, t, a, b
    FROM new_rows r;
    PERFORM cw_emit_events(u, t, a, b, false);
    RETURN NULL;
END $$;

CREATE TRIGGER events_holds_created AFTER INSERT ON holds
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cw_events_holds_created();

-- hold.captured | hold.voided | hold.expired: a pending hold finalized.
CREATE FUNCTION cw_events_holds_finalized() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    u text[]; t text[]; a timestamptz[]; b jsonb[];
BEGIN
    SELECT array_agg(n.user_id ORDER BY n.user_id, n.hold_id),
           array_agg('hold.' || n.status ORDER BY n.user_id, n.hold_id),
           array_agg(n.finalized_at ORDER BY n.user_id, n.hold_id),
           array_agg(jsonb_strip_nulls(jsonb_build_object(
               'hold_id', n.hold_id,
               'amount_micros', n.amount_micros,
               'captured_micros', n.captured_micros,
               'released_micros', n.amount_micros - n.captured_micros,
               'capture_transaction_id', n.capture_transaction_id::text,
               'request_id', n.request_id,
               'agent_id', n.agent_id)) ORDER BY n.user_id, n.hold_id)
    INTO u, t, a, b
    FROM new_rows n JOIN old_rows o ON o.user_id = n.user_id AND o.hold_id = n.hold_id
    WHERE o.status = 'pending' AND n.status <> 'pending';
    PERFORM cw_emit_events(u, t, a, b, false);
    RETURN NULL;
END $$;

CREATE TRIGGER events_holds_finalized AFTER UPDATE ON holds
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cw_events_holds_finalized();

-- balance.low / balance.depleted once per downward crossing (a crossing needs the balance
-- at or above the line before, so rising above it re-arms the alert), and the auto-recharge
-- attempt, at commit of the transaction that lowered the available balance.
CREATE FUNCTION cw_events_available_dropped() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    avail_before bigint := OLD.balance_micros - OLD.held_micros;
    avail_after bigint := NEW.balance_micros - NEW.held_micros;
    low bigint;
    has_rule boolean;
    r_rule auto_recharge_rules%ROWTYPE;
    this_month text;
    committed bigint;
BEGIN
    -- One lookup for both: the account's threshold (or the default) and its enabled rule.
    SELECT coalesce(a.threshold_micros, s.balance_low_default_micros), r.user_id IS NOT NULL
    INTO low, has_rule
    FROM event_settings s LEFT JOIN balance_alerts a ON a.user_id = NEW.user_id
    LEFT JOIN auto_recharge_rules r ON r.user_id = NEW.user_id AND r.enabled;
    IF low > 0 AND avail_before >= low AND avail_after < low THEN
        PERFORM cw_emit_event(NEW.user_id, 'balance.low', NEW.updated_at, jsonb_build_object(
            'threshold_micros', low, 'available_before_micros', avail_before,
            'available_micros', avail_after), false);
    END IF;
    IF avail_before > 0 AND avail_after <= 0 THEN
        PERFORM cw_emit_event(NEW.user_id, 'balance.depleted', NEW.updated_at, jsonb_build_object(
            'available_before_micros', avail_before, 'available_micros', avail_after), false);
    END IF;
    IF NOT has_rule THEN
        RETURN NULL;
    END IF;
    SELECT * INTO r_rule FROM auto_recharge_rules r WHERE r.user_id = NEW.user_id AND r.enabled;
    IF NOT FOUND OR avail_after >= r_rule.threshold_micros
       OR (r_rule.retry_after IS NOT NULL AND r_rule.retry_after > NEW.updated_at)
       OR EXISTS (SELECT 1 FROM auto_recharge_attempts x WHERE x.user_id = NEW.user_id
                  AND x.status IN ('pending', 'submitted')) THEN
        RETURN NULL;
    END IF;
    this_month := to_char(NEW.updated_at AT TIME ZONE 'UTC', 'YYYY-MM');
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
        NEW.updated_at, NEW.updated_at, NEW.updated_at);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER events_available_dropped AFTER UPDATE ON credits
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.balance_micros - NEW.held_micros < OLD.balance_micros - OLD.held_micros)
    EXECUTE FUNCTION cw_events_available_dropped();

-- subscription.updated: the state of a subscription whose user is known changed.
CREATE FUNCTION cw_events_subscription() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cw_emit_event(NEW.user_id, 'subscription.updated', NEW.updated_at,
        jsonb_strip_nulls(jsonb_build_object(
            'subscription_id', NEW.subscription_id,
            'customer_id', NEW.customer_id,
            'status', NEW.status,
            'price_id', NEW.price_id,
            'period_credits_micros', NEW.period_credits_micros,
            'current_period_start', NEW.current_period_start,
            'current_period_end', NEW.current_period_end,
            'cancel_at_period_end', NEW.cancel_at_period_end)), true);
    RETURN NULL;
END $$;

CREATE TRIGGER events_subscription AFTER UPDATE ON subscriptions FOR EACH ROW
    WHEN (NEW.user_id IS NOT NULL AND (
        OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.status IS DISTINCT FROM NEW.status
        OR OLD.price_id IS DISTINCT FROM NEW.price_id
        OR OLD.period_credits_micros IS DISTINCT FROM NEW.period_credits_micros
        OR OLD.current_period_start IS DISTINCT FROM NEW.current_period_start
        OR OLD.current_period_end IS DISTINCT FROM NEW.current_period_end
        OR OLD.cancel_at_period_end IS DISTINCT FROM NEW.cancel_at_period_end))
    EXECUTE FUNCTION cw_events_subscription();

-- credits.expiring: one per notice row (one per lot).
CREATE FUNCTION cw_events_expiring() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    u text[]; t text[]; a timestamptz[]; b jsonb[];
BEGIN
    SELECT array_agg(r.user_id ORDER BY r.user_id, r.expires_at, r.lot_id),
           array_agg('credits.expiring'::text ORDER BY r.user_id, r.expires_at, r.lot_id),
           array_agg(r.notified_at ORDER BY r.user_id, r.expires_at, r.lot_id),
           array_agg(jsonb_build_object(
               'lot_id', r.lot_id::text,
               'source', r.source,
               'remaining_micros', r.remaining_micros,
               'expires_at', r.expires_at) ORDER BY r.user_id, r.expires_at, r.lot_id)
    INTO u, t, a, b
    FROM new_rows r;
    PERFORM cw_emit_events(u, t, a, b, true);
    RETURN NULL;
END $$;

CREATE TRIGGER events_expiring AFTER INSERT ON lot_expiry_notices
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cw_events_expiring();

-- auto_recharge.requested | .succeeded | .failed (and payment.failed with it).
CREATE FUNCTION cw_events_recharge_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body jsonb := jsonb_strip_nulls(jsonb_build_object(
        'attempt_id', NEW.attempt_id,
        'price_id', NEW.price_id,
        'credits_micros', NEW.credits_micros,
        'amount_minor', NEW.amount_minor,
        'currency', NEW.currency,
        'payment_intent_id', NEW.payment_intent_id,
        'transaction_id', NEW.transaction_id::text,
        'failure_code', NEW.failure_code,
        'failure_message', NEW.failure_message));
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM cw_emit_event(NEW.user_id, 'auto_recharge.requested', NEW.created_at, body, true);
    ELSIF NEW.status = 'succeeded' THEN
        PERFORM cw_emit_event(NEW.user_id, 'auto_recharge.succeeded', NEW.updated_at, body, true);
    ELSIF NEW.status = 'failed' THEN
        PERFORM cw_emit_events(ARRAY[NEW.user_id, NEW.user_id],
            ARRAY['auto_recharge.failed', 'payment.failed'],
            ARRAY[NEW.updated_at, NEW.updated_at],
            ARRAY[body, body || jsonb_build_object('reason', 'auto_recharge')], true);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_recharge_requested AFTER INSERT ON auto_recharge_attempts
    FOR EACH ROW EXECUTE FUNCTION cw_events_recharge_attempt();
CREATE TRIGGER events_recharge_finished AFTER UPDATE ON auto_recharge_attempts FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('succeeded', 'failed'))
    EXECUTE FUNCTION cw_events_recharge_attempt();

-- auto_recharge.disabled: the rule was turned off after too many failures.
CREATE FUNCTION cw_events_recharge_disabled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cw_emit_event(NEW.user_id, 'auto_recharge.disabled', NEW.updated_at,
        jsonb_build_object('reason', NEW.disabled_reason,
                           'consecutive_failures', NEW.consecutive_failures), true);
    RETURN NULL;
END $$;

CREATE TRIGGER events_recharge_disabled AFTER UPDATE ON auto_recharge_rules FOR EACH ROW
    WHEN (OLD.enabled AND NOT NEW.enabled AND NEW.disabled_reason IS NOT NULL)
    EXECUTE FUNCTION cw_events_recharge_disabled();
