-- Smart Streaks and referral rewards (docs/rewards.md).
-- "At most once" is a database constraint here, not only a code path: a milestone row is
-- unique per (user, streak, milestone), a referral row per referee, and each reward lot has
-- a grant_key that credit_lots_grant_key makes unique per account.

-- The milestones and their rewards; operators may change them (new streaks see the change).
CREATE TABLE streak_milestone_rewards (
    milestone_days integer PRIMARY KEY CHECK (milestone_days > 0),
    reward_micros  bigint NOT NULL CHECK (reward_micros > 0)
);
INSERT INTO streak_milestone_rewards (milestone_days, reward_micros) VALUES
    (3, 1000000), (7, 5000000), (14, 10000000), (30, 25000000);

-- One row per user who was ever active: the current streak as of its last active day.
-- Whether the streak is still alive "today" is computed at read time from last_active_day.
CREATE TABLE streaks (
    user_id         text PRIMARY KEY REFERENCES credits (user_id),
    -- Active days in the current streak (a forgiven missed day does not count).
    current_days    integer NOT NULL CHECK (current_days > 0),
    -- First active day of the current streak: identifies the streak for its milestones.
    streak_start    date NOT NULL,
    last_active_day date NOT NULL CHECK (last_active_day >= streak_start),
    longest_days    integer NOT NULL CHECK (longest_days >= current_days),
    -- The latest missed day this streak forgave; NULL if none.
    grace_day       date CHECK (grace_day > streak_start AND grace_day < last_active_day),
    updated_at      timestamptz NOT NULL
);

-- Each milestone rewarded at most once per streak.
CREATE TABLE streak_milestones (
    user_id        text NOT NULL REFERENCES credits (user_id),
    streak_start   date NOT NULL,
    milestone_days integer NOT NULL,
    reward_micros  bigint NOT NULL CHECK (reward_micros > 0),
    transaction_id bigint NOT NULL,
    granted_at     timestamptz NOT NULL,
    PRIMARY KEY (user_id, streak_start, milestone_days)
);

-- Accounts with a recorded paid purchase or subscription period (written by the billing
-- path through referrals.on_first_payment); a paying account may not redeem a code.
CREATE TABLE paid_accounts (
    user_id       text PRIMARY KEY,
    first_paid_at timestamptz NOT NULL
);

-- One row per referee: a user redeems at most one code, ever.
CREATE TABLE referrals (
    user_id                 text PRIMARY KEY REFERENCES credits (user_id),
    referrer_user_id        text NOT NULL REFERENCES credits (user_id),
    code                    text NOT NULL,
    redeemed_at             timestamptz NOT NULL,
    referee_transaction_id  bigint NOT NULL,
    -- NULL until the referee's first payment; then 'rewarded', or 'capped' when the
    -- referrer had already earned the maximum number of rewards.
    referrer_outcome        text CHECK (referrer_outcome IN ('rewarded', 'capped')),
    referrer_rewarded_at    timestamptz,
    referrer_transaction_id bigint,
    CONSTRAINT referrals_not_self CHECK (user_id <> referrer_user_id),
    CONSTRAINT referrals_outcome_recorded CHECK (
        (referrer_outcome IS NULL AND referrer_rewarded_at IS NULL)
        OR (referrer_outcome = 'capped' AND referrer_rewarded_at IS NOT NULL
            AND referrer_transaction_id IS NULL)
        OR (referrer_outcome = 'rewarded' AND referrer_rewarded_at IS NOT NULL
            AND referrer_transaction_id IS NOT NULL))
);
CREATE INDEX referrals_referrer ON referrals (referrer_user_id);

ALTER TABLE referral_codes
    ADD CONSTRAINT referral_codes_rewards_bounded CHECK (rewards_granted >= 0);
