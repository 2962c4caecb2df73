-- Team wallets (members with a spending cap per UTC day or month) and usage rollups.
--
-- Both are maintained by triggers on the history and the holds, in the transaction of the
-- write that changes them: a debit (direct or by Capture), a reversal, a hold placed or
-- released. Every such writer already holds the account's credits row lock, so the counters
-- of an account change one writer at a time, in commit order, exactly as its balance does.
-- The triggers read only their own row and rows of earlier statements (the debit a reversal
-- gives back, the hold a capture settles), never what other arms of the same statement wrote.

-- The member of each debit (NULL: the account itself), and of each hold (copied to its capture).
ALTER TABLE credit_transactions ADD COLUMN member_id text;
ALTER TABLE holds ADD COLUMN member_id text;

-- The members of an account as they are now (SetMember creates or replaces one).
CREATE TABLE account_members (
    user_id    text NOT NULL REFERENCES credits (user_id),
    member_id  text NOT NULL,
    cap_micros bigint NOT NULL CHECK (cap_micros > 0),
    cap_period text NOT NULL CHECK (cap_period IN ('day', 'month')),
    active     boolean NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, member_id)
);

-- Every SetMember, append-only: the cap in force at each debit, for VerifyLedger. A change
-- applies to the account's history rows after after_transaction_id (its newest row when the
-- change was made under the account lock; 0 when it had none).
CREATE TABLE member_changes (
    user_id              text NOT NULL,
    member_id            text NOT NULL,
    change_id            bigint GENERATED ALWAYS AS IDENTITY,
    after_transaction_id bigint NOT NULL,
    cap_micros           bigint NOT NULL CHECK (cap_micros > 0),
    cap_period           text NOT NULL CHECK (cap_period IN ('day', 'month')),
    active               boolean NOT NULL,
    changed_at           timestamptz NOT NULL,
    PRIMARY KEY (user_id, member_id, change_id)
);

-- What each member spent (net of reversals) and holds, per UTC day of the spend: a debit on
-- its own day, a capture and its hold on the hold's day, a reversal on its debit's day. A
-- month's spend is the sum of its days (at most 31 rows).
CREATE TABLE member_spend (
    user_id      text NOT NULL,
    member_id    text NOT NULL,
    day          date NOT NULL,
    spent_micros bigint NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
    held_micros  bigint NOT NULL DEFAULT 0 CHECK (held_micros >= 0),
    PRIMARY KEY (user_id, member_id, day)
);

-- Usage per UTC day of the debit, agent and member ('' for none): what GetUsage reads when it
-- is not grouped by session. A reversal counts against the row of the debit it gives back.
CREATE TABLE usage_daily (
    user_id         text NOT NULL,
    day             date NOT NULL,
    agent_id        text NOT NULL,
    member_id       text NOT NULL,
    debited_micros  bigint NOT NULL,
    reversed_micros bigint NOT NULL,
    debits          bigint NOT NULL,
    reversals       bigint NOT NULL,
    PRIMARY KEY (user_id, day, agent_id, member_id)
);

-- The same, per session too: what GetUsage reads when grouped by session (sessions are many,
-- so the daily rollup above stays small without them).
CREATE TABLE usage_sessions (
    user_id         text NOT NULL,
    day             date NOT NULL,
    session_id      text NOT NULL,
    agent_id        text NOT NULL,
    member_id       text NOT NULL,
    debited_micros  bigint NOT NULL,
    reversed_micros bigint NOT NULL,
    debits          bigint NOT NULL,
    reversals       bigint NOT NULL,
    PRIMARY KEY (user_id, day, session_id, agent_id, member_id)
);

-- The UTC day of a moment.
CREATE FUNCTION cw_utc_day(moment timestamptz) RETURNS date LANGUAGE sql IMMUTABLE AS $$
    SELECT (moment AT TIME ZONE 'UTC')::date
$$;

-- A debit or a reversal: its usage rows, and its member's spend.
CREATE FUNCTION cw_usage_transaction() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_agent text; v_member text; v_session text; v_at timestamptz; v_hold uuid;
    v_debited bigint := 0; v_reversed bigint := 0; v_debits bigint := 0; v_reversals bigint := 0;
    v_day date; v_spend_day date;
BEGIN
    IF NEW.type = 'debit' THEN
        v_agent := NEW.agent_id; v_member := NEW.member_id; v_session := NEW.session_id;
        v_at := NEW.created_at; v_hold := NEW.hold_id;
        v_debited := -NEW.amount_micros; v_debits := 1;
    ELSE
        SELECT t.agent_id, t.member_id, t.session_id, t.created_at, t.hold_id
        INTO v_agent, v_member, v_session, v_at, v_hold
        FROM credit_transactions t
        WHERE t.user_id = NEW.user_id AND t.transaction_id = NEW.related_transaction_id;
        v_reversed := NEW.amount_micros; v_reversals := 1;
    END IF;
    v_day := cw_utc_day(v_at);
    INSERT INTO usage_daily AS u (user_id, day, agent_id, member_id, debited_micros,
                                  reversed_micros, debits, reversals)
    VALUES (NEW.user_id, v_day, coalesce(v_agent, ''), coalesce(v_member, ''), v_debited,
            v_reversed, v_debits, v_reversals)
    ON CONFLICT (user_id, day, agent_id, member_id) DO UPDATE SET
        debited_micros = u.debited_micros + EXCLUDED.debited_micros,
        reversed_micros = u.reversed_micros + EXCLUDED.reversed_micros,
        debits = u.debits + EXCLUDED.debits, reversals = u.reversals + EXCLUDED.reversals;
    INSERT INTO usage_sessions AS u (user_id, day, session_id, agent_id, member_id,
                                     debited_micros, reversed_micros, debits, reversals)
    VALUES (NEW.user_id, v_day, coalesce(v_session, ''), coalesce(v_agent, ''),
            coalesce(v_member, ''), v_debited, v_reversed, v_debits, v_reversals)
    ON CONFLICT (user_id, day, session_id, agent_id, member_id) DO UPDATE SET
        debited_micros = u.debited_micros + EXCLUDED.debited_micros,
        reversed_micros = u.reversed_micros + EXCLUDED.reversed_micros,
        debits = u.debits + EXCLUDED.debits, reversals = u.reversals + EXCLUDED.reversals;
    IF v_member IS NOT NULL THEN
        v_spend_day := v_day;
        IF v_hold IS NOT NULL THEN
            SELECT cw_utc_day(h.created_at) INTO v_spend_day FROM holds h
            WHERE h.user_id = NEW.user_id AND h.hold_id = v_hold;
        END IF;
        IF v_reversed = 0 THEN
            INSERT INTO member_spend AS s (user_id, member_id, day, spent_micros)
            VALUES (NEW.user_id, v_member, v_spend_day, v_debited)
            ON CONFLICT (user_id, member_id, day) DO UPDATE SET
                spent_micros = s.spent_micros + EXCLUDED.spent_micros;
        ELSE
            -- The debit's row exists: its spend counted there (a CHECK refuses going below 0).
            UPDATE member_spend SET spent_micros = spent_micros - v_reversed
            WHERE user_id = NEW.user_id AND member_id = v_member AND day = v_spend_day;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER usage_transactions AFTER INSERT ON credit_transactions FOR EACH ROW
    WHEN (NEW.type IN ('debit', 'reversal')) EXECUTE FUNCTION cw_usage_transaction();

-- A member's hold counts against its cap from Authorize until it is captured, voided or expires.
CREATE FUNCTION cw_member_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO member_spend AS s (user_id, member_id, day, held_micros)
        VALUES (NEW.user_id, NEW.member_id, cw_utc_day(NEW.created_at), NEW.amount_micros)
        ON CONFLICT (user_id, member_id, day) DO UPDATE SET
            held_micros = s.held_micros + EXCLUDED.held_micros;
    ELSE
        UPDATE member_spend SET held_micros = held_micros - NEW.amount_micros
        WHERE user_id = NEW.user_id AND member_id = NEW.member_id
          AND day = cw_utc_day(NEW.created_at);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER member_holds_placed AFTER INSERT ON holds FOR EACH ROW
    WHEN (NEW.member_id IS NOT NULL AND NEW.status = 'pending') EXECUTE FUNCTION cw_member_hold();
CREATE TRIGGER member_holds_released AFTER UPDATE ON holds FOR EACH ROW
    WHEN (NEW.member_id IS NOT NULL AND OLD.status = 'pending' AND NEW.status <> 'pending')
    EXECUTE FUNCTION cw_member_hold();

-- The rollups of the history written before this migration (no member had spent yet).
INSERT INTO usage_daily (user_id, day, agent_id, member_id, debited_micros, reversed_micros,
                         debits, reversals)
SELECT d.user_id, cw_utc_day(d.created_at), coalesce(d.agent_id, ''), '',
       sum(CASE WHEN t.type = 'debit' THEN -t.amount_micros ELSE 0 END),
       sum(CASE WHEN t.type = 'reversal' THEN t.amount_micros ELSE 0 END),
       count(*) FILTER (WHERE t.type = 'debit'), count(*) FILTER (WHERE t.type = 'reversal')
FROM credit_transactions t
JOIN credit_transactions d ON d.user_id = t.user_id
 AND d.transaction_id = CASE WHEN t.type = 'debit' THEN t.transaction_id
                             ELSE t.related_transaction_id END
WHERE t.type IN ('debit', 'reversal')
GROUP BY 1, 2, 3;

INSERT INTO usage_sessions (user_id, day, session_id, agent_id, member_id, debited_micros,
                            reversed_micros, debits, reversals)
SELECT d.user_id, cw_utc_day(d.created_at), coalesce(d.session_id, ''),
       coalesce(d.agent_id, ''), '',
       sum(CASE WHEN t.type = 'debit' THEN -t.amount_micros ELSE 0 END),
       sum(CASE WHEN t.type = 'reversal' THEN t.amount_micros ELSE 0 END),
       count(*) FILTER (WHERE t.type = 'debit'), count(*) FILTER (WHERE t.type = 'reversal')
FROM credit_transactions t
JOIN credit_transactions d ON d.user_id = t.user_id
 AND d.transaction_id = CASE WHEN t.type = 'debit' THEN t.transaction_id
                             ELSE t.related_transaction_id END
WHERE t.type IN ('debit', 'reversal')
GROUP BY 1, 2, 3, 4;
