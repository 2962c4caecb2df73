-- Billing: provider customers, subscriptions and their paid periods, purchases, refunds,
-- and the monthly rollover's bookkeeping.
--
-- Provider-keyed tables (customers, subscriptions, purchases, payment refunds) are keyed by
-- the provider's ids: their rows exist before the user is known (Stripe does not order its
-- events), so user_id cannot lead their keys. Every row that moves credits is also a lot
-- (credit_lots, keyed by user_id) whose grant_key makes the grant unique per user.

-- Which user owns a provider customer (learnt from a checkout's client_reference_id).
CREATE TABLE billing_customers (
    customer_id text PRIMARY KEY,
    user_id     text NOT NULL,
    created_at  timestamptz NOT NULL
);

-- A subscription's latest state; user_id is NULL until a checkout links its customer.
CREATE TABLE subscriptions (
    subscription_id       text PRIMARY KEY,
    customer_id           text NOT NULL DEFAULT '',
    user_id               text,
    status                text NOT NULL DEFAULT 'unspecified' CHECK (status IN
                            ('unspecified', 'active', 'trialing', 'past_due', 'unpaid',
                             'incomplete', 'incomplete_expired', 'canceled', 'paused')),
    price_id              text NOT NULL DEFAULT '',
    period_credits_micros bigint NOT NULL DEFAULT 0 CHECK (period_credits_micros >= 0),
    current_period_start  timestamptz,
    current_period_end    timestamptz,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    -- The provider time of the last applied state: an older event never overwrites it.
    last_event_at         timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);
CREATE INDEX subscriptions_user ON subscriptions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX subscriptions_customer ON subscriptions (customer_id);

-- One row per paid (subscription, period): exactly one grant per period, by the primary key.
-- lot_id is NULL while the subscription has no user yet (a pending paid period).
CREATE TABLE subscription_periods (
    subscription_id    text NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL CHECK (period_end > period_start),
    user_id            text,
    credits_micros     bigint NOT NULL CHECK (credits_micros >= 0),
    payment_id         text NOT NULL DEFAULT '',
    amount_paid_minor  bigint NOT NULL DEFAULT 0 CHECK (amount_paid_minor >= 0),
    currency           text NOT NULL DEFAULT '',
    lot_id             bigint,
    transaction_id     bigint,
    clawed_back_micros bigint NOT NULL DEFAULT 0 CHECK (clawed_back_micros >= 0),
    recorded_at        timestamptz NOT NULL,
    granted_at         timestamptz,
    PRIMARY KEY (subscription_id, period_start),
    CHECK ((lot_id IS NULL) = (granted_at IS NULL)),
    CHECK (clawed_back_micros <= credits_micros)
);
CREATE INDEX subscription_periods_payment ON subscription_periods (payment_id) WHERE payment_id <> '';
CREATE INDEX subscription_periods_user ON subscription_periods (user_id, lot_id) WHERE lot_id IS NOT NULL;

-- One row per one-off purchase (a checkout session): its credits are granted once.
CREATE TABLE purchases (
    purchase_id        text PRIMARY KEY,
    user_id            text NOT NULL,
    payment_id         text NOT NULL DEFAULT '',
    customer_id        text NOT NULL DEFAULT '',
    price_id           text NOT NULL DEFAULT '',
    credits_micros     bigint NOT NULL CHECK (credits_micros > 0),
    amount_paid_minor  bigint NOT NULL CHECK (amount_paid_minor >= 0),
    currency           text NOT NULL DEFAULT '',
    lot_id             bigint NOT NULL,
    transaction_id     bigint NOT NULL,
    clawed_back_micros bigint NOT NULL DEFAULT 0 CHECK (clawed_back_micros >= 0),
    created_at         timestamptz NOT NULL,
    CHECK (clawed_back_micros <= credits_micros)
);
CREATE UNIQUE INDEX purchases_payment ON purchases (payment_id) WHERE payment_id <> '';

-- The cumulative refunded amount per payment, as last reported: kept even when the refund
-- arrives before the payment's purchase or period, which then claws back on arrival.
CREATE TABLE payment_refunds (
    payment_id            text PRIMARY KEY,
    amount_refunded_minor bigint NOT NULL CHECK (amount_refunded_minor >= 0),
    refund_ids            text[] NOT NULL DEFAULT '{}',
    updated_at            timestamptz NOT NULL
);

-- Rollover: which accounts a month's run has processed (once per account and month).
CREATE TABLE rollover_accounts (
    user_id      text NOT NULL,
    period       text NOT NULL,
    processed_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, period)
);
CREATE INDEX rollover_accounts_period ON rollover_accounts (period);

-- One row per Rollover call, for operators.
CREATE TABLE rollover_runs (
    run_id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period                 text NOT NULL,
    started_at             timestamptz NOT NULL,
    finished_at            timestamptz,
    accounts_processed     bigint NOT NULL DEFAULT 0,
    chunks                 bigint NOT NULL DEFAULT 0,
    credits_carried_micros bigint NOT NULL DEFAULT 0,
    credits_expired_micros bigint NOT NULL DEFAULT 0,
    holds_released         bigint NOT NULL DEFAULT 0
);
