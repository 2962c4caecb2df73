-- The credit model of lots: burn-down priority, credits restricted to some agents, an
-- overdraft limit per account, and what a balance as of a past moment needs.

-- Priority: 0-100, lower burns first; every existing lot gets the default, so the order of
-- existing lots (soonest expiry, never-expiring last, oldest grant) is unchanged.
-- agent_ids: the agents a lot may pay for; empty = any.
ALTER TABLE credit_lots
    ADD COLUMN priority smallint NOT NULL DEFAULT 50 CHECK (priority BETWEEN 0 AND 100),
    ADD COLUMN agent_ids text[] NOT NULL DEFAULT '{}';
DROP INDEX credit_lots_live;
-- Burn-down order: priority, soonest expiry (never-expiring last), oldest grant.
CREATE INDEX credit_lots_live
    ON credit_lots (user_id, priority, expires_at ASC NULLS LAST, granted_at, lot_id)
    WHERE remaining_micros > 0;

-- overdraft_limit_micros: how far below zero debits may take the available balance (as debt).
-- restricted_lots: the account was ever granted a restricted lot; until then every live lot
-- applies to every debit and the debit needs no look at the lots' agents.
ALTER TABLE credits
    ADD COLUMN overdraft_limit_micros bigint NOT NULL DEFAULT 0
        CHECK (overdraft_limit_micros >= 0),
    ADD COLUMN restricted_lots boolean NOT NULL DEFAULT false;

-- Every limit an account was set to, so VerifyLedger can tell the limit an overdraft used.
CREATE TABLE overdraft_limit_changes (
    user_id      text NOT NULL REFERENCES credits (user_id),
    change_id    bigint GENERATED ALWAYS AS IDENTITY,
    limit_micros bigint NOT NULL CHECK (limit_micros >= 0),
    changed_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, change_id)
);

-- The part of a debit that no lot paid: taken as debt under the overdraft limit. Later
-- credits pay it (each payment is a lot_consumptions row of the debit, so a reversal gives it
-- back to the lot that paid it); a reversal of the unpaid part cancels that much debt.
CREATE TABLE debit_overdrafts (
    user_id           text NOT NULL,
    transaction_id    bigint NOT NULL,
    amount_micros     bigint NOT NULL CHECK (amount_micros > 0),
    paid_micros       bigint NOT NULL DEFAULT 0 CHECK (paid_micros >= 0),
    reversed_micros   bigint NOT NULL DEFAULT 0 CHECK (reversed_micros >= 0),
    limit_micros      bigint NOT NULL CHECK (limit_micros > 0),
    debt_after_micros bigint NOT NULL,
    CHECK (paid_micros + reversed_micros <= amount_micros),
    PRIMARY KEY (user_id, transaction_id)
);
CREATE INDEX debit_overdrafts_unpaid ON debit_overdrafts (user_id, transaction_id)
    WHERE paid_micros + reversed_micros < amount_micros;

-- The account's debt after each change, for the balance as of a past moment: not every
-- change of the debt writes a history row (a Void that pays debt moves lots and debt only).
-- Written by the trigger below, so no writer can forget it.
CREATE TABLE debt_history (
    user_id     text NOT NULL,
    change_id   bigint GENERATED ALWAYS AS IDENTITY,
    changed_at  timestamptz NOT NULL,
    debt_micros bigint NOT NULL,
    PRIMARY KEY (user_id, change_id)
);
INSERT INTO debt_history (user_id, changed_at, debt_micros)
SELECT user_id, updated_at, debt_micros FROM credits WHERE debt_micros <> 0;

CREATE FUNCTION cw_debt_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO debt_history (user_id, changed_at, debt_micros)
    VALUES (NEW.user_id, NEW.updated_at, NEW.debt_micros);
    RETURN NULL;
END $$;

CREATE TRIGGER debt_history AFTER UPDATE OF debt_micros ON credits FOR EACH ROW
    WHEN (OLD.debt_micros IS DISTINCT FROM NEW.debt_micros)
    EXECUTE FUNCTION cw_debt_history();

-- What each lot held after each change, for the lots of a balance as of a past moment. The
-- time of a change is its write's: the account's updated_at when the transaction commits
-- (every write that changes a lot moves it to its own time), hence a deferred trigger. Lots
-- granted before this migration start from what they held at the account's last write.
CREATE TABLE lot_history (
    user_id          text NOT NULL,
    change_id        bigint GENERATED ALWAYS AS IDENTITY,
    lot_id           bigint NOT NULL,
    remaining_micros bigint NOT NULL,
    changed_at       timestamptz NOT NULL,
    PRIMARY KEY (user_id, change_id)
);
CREATE INDEX lot_history_lot ON lot_history (user_id, lot_id, change_id);
INSERT INTO lot_history (user_id, lot_id, remaining_micros, changed_at)
SELECT l.user_id, l.lot_id, l.remaining_micros, c.updated_at
FROM credit_lots l JOIN credits c ON c.user_id = l.user_id;

CREATE FUNCTION cw_lot_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lot_history (user_id, lot_id, remaining_micros, changed_at)
    SELECT NEW.user_id, NEW.lot_id, NEW.remaining_micros, c.updated_at
    FROM credits c WHERE c.user_id = NEW.user_id;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER lot_history_granted AFTER INSERT ON credit_lots
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cw_lot_history();
CREATE CONSTRAINT TRIGGER lot_history_changed AFTER UPDATE OF remaining_micros ON credit_lots
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.remaining_micros IS DISTINCT FROM NEW.remaining_micros)
    EXECUTE FUNCTION cw_lot_history();
