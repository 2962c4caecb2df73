-- The debits of a group-commit batch in one call (server/ledger/debit.py: debit_many).
--
-- Before this, a batch sent one fused statement per debit, each a round trip through the
-- server's event loop while the batch held its accounts' locks. cw_debit_many takes the whole
-- batch as arrays and applies its debits in the order given (the batch's (account,
-- request_id) order), each as before: priced, checked against debt, the lots that apply to its
-- agent, the overdraft limit and its member's cap, all before it writes anything, then the
-- same fused statement as before (burn-down, history row, consumptions, overdraft, balance,
-- activity). A refusal is returned as a row with its reason and leaves the rest alone; the
-- server builds the error from it (its words live in one place, the Python of the ledger).
--
-- One thing stays in the server: the streak of an account's first debit of the day (which
-- may grant a milestone reward, a lot that later debits of the account can spend). So the
-- call stops right after such a debit when a later debit of the call is the same account's;
-- the server does the streak bookkeeping of what was applied and calls again with the rest.

-- The burn-down of a spend: (lot_id, amount) of each live lot that applies to p_agent, in
-- burn-down order (the lowest priority first, then the soonest expiry, never-expiring last,
-- then the oldest grant), at most p_amount in all. lot_id makes the order total, so the
-- running sum has no peers. The one definition of the burn-down: lots.consume and the debit
-- use it; lots.BURN_DOWN_ORDER is the same order for listings (a test compares the two).
CREATE FUNCTION cw_take(p_user text, p_amount bigint, p_now timestamptz, p_agent text)
RETURNS TABLE (lot_id bigint, amount bigint) LANGUAGE sql STABLE AS $$
    SELECT live.lot_id,
           LEAST(live.remaining_micros, p_amount - (live.upto - live.remaining_micros))
    FROM (
        SELECT l.lot_id, l.remaining_micros,
               (sum(l.remaining_micros) OVER (
                   ORDER BY l.priority, l.expires_at ASC NULLS LAST, l.granted_at, l.lot_id
               ))::bigint AS upto
        FROM credit_lots l
        WHERE l.user_id = p_user AND l.remaining_micros > 0
          AND (l.expires_at IS NULL OR l.expires_at > p_now)
          AND (cardinality(l.agent_ids) = 0 OR p_agent = ANY(l.agent_ids))
    ) live
    WHERE live.upto - live.remaining_micros < p_amount
$$;

-- One row per debit the call got to: its position, and either its refusal (reason, with the
-- figures the error reports) or what it did, and the account after it.
CREATE TYPE cw_debit_outcome AS (
    ord                    integer,
    reason                 text,     -- NULL: applied
    figure_micros          bigint,   -- INSUFFICIENT_CREDITS: what applies; MEMBER_*: used
    cap_micros             bigint,   -- MEMBER_CAP_EXCEEDED
    cap_period             text,     -- MEMBER_CAP_EXCEEDED
    charged_micros         bigint,
    overdraft_micros       bigint,
    transaction_id         bigint,
    first_today            boolean,
    user_id                text,
    balance_micros         bigint,
    held_micros            bigint,
    debt_micros            bigint,
    next_expiry_at         timestamptz,
    created_at             timestamptz,
    updated_at             timestamptz,
    last_transaction_id    bigint,
    overdraft_limit_micros bigint,
    restricted_lots        boolean,
    streak_current_days    integer,
    streak_streak_start    date,
    streak_last_active_day date,
    streak_longest_days    integer,
    streak_grace_day       date
);

-- The caller holds every account's credits row lock (accounts.lock_many, which also recorded
-- due expiries) and passes each debit's time from it. Arrays, one element per debit:
-- p_priced: the amount is the agent's price x p_quantities (1 when NULL; p_amounts NULL); the
-- quantity is recorded as sent, and only for a priced debit; p_agents: the
-- agent the debit is recorded for and whose lots apply; p_days: the UTC day of p_nows;
-- p_more: a later debit of the call is the same account's.
-- p_amount_max: the per-request bound of a priced amount (limits.AMOUNT_MICROS_MAX).
CREATE FUNCTION cw_debit_many(
    p_users text[], p_request_ids text[], p_amounts bigint[], p_priced boolean[],
    p_agents text[], p_quantities bigint[], p_sessions text[], p_metadata text[],
    p_members text[], p_nows timestamptz[], p_days date[], p_more boolean[],
    p_amount_max bigint
) RETURNS SETOF cw_debit_outcome LANGUAGE plpgsql AS $$
DECLARE
    v_out    cw_debit_outcome;
    v_acct   credits%ROWTYPE;
    v_n      integer := coalesce(array_length(p_users, 1), 0);
    v_user   text;
    v_now    timestamptz;
    v_cost   bigint;
    v_live   bigint;
    v_od     bigint;
    v_after  record;
    v_price  record;
    v_member record;
BEGIN
    FOR i IN 1 .. v_n LOOP
        v_user := p_users[i];
        v_now := p_nows[i];
        v_out := NULL;
        v_cost := NULL;
        v_out.ord := i;
        -- The account as the previous debit of the call left it, when it was the same one
        -- (v_acct is then what that debit's statement returned); else its row.
        IF v_acct.user_id IS DISTINCT FROM v_user THEN
            SELECT * INTO STRICT v_acct FROM credits c WHERE c.user_id = v_user;
        END IF;

        -- What it costs.
        IF p_priced[i] THEN
            SELECT p.price_micros, p.active INTO v_price
            FROM agent_pricing p WHERE p.agent_id = p_agents[i];
            IF NOT FOUND THEN
                v_out.reason := 'AGENT_NOT_FOUND';
            ELSIF NOT v_price.active THEN
                v_out.reason := 'AGENT_DISABLED';
            ELSIF v_price.price_micros::numeric * coalesce(p_quantities[i], 1) > p_amount_max THEN
                -- A malformed request, not a state: the server aborts the batch on it.
                v_out.reason := 'INVALID_ARGUMENT';
            ELSE
                v_cost := v_price.price_micros * coalesce(p_quantities[i], 1);
            END IF;
        ELSE
            v_cost := p_amounts[i];
        END IF;
        v_out.charged_micros := v_cost;

        -- Debt beyond the limit refuses any debit (as debit.check_not_in_debt refuses a hold).
        IF v_out.reason IS NULL AND v_acct.debt_micros > v_acct.overdraft_limit_micros THEN
            v_out.reason := 'ACCOUNT_IN_DEBT';
        END IF;

        -- What the lots that apply hold, up to the cost; the rest is overdraft (debt), which
        -- the limit must cover (a hold may not overdraw at all). An account never granted a
        -- restricted lot needs no look at its lots: they hold balance - held + debt.
        IF v_out.reason IS NULL THEN
            IF v_acct.restricted_lots THEN
                SELECT coalesce(sum(t.amount), 0)::bigint INTO v_live
                FROM cw_take(v_user, v_cost, v_now, p_agents[i]) t;
            ELSE
                v_live := v_acct.balance_micros - v_acct.held_micros + v_acct.debt_micros;
            END IF;
            v_od := greatest(0, v_cost - v_live);
            IF v_od > 0 AND v_acct.debt_micros + v_od > v_acct.overdraft_limit_micros THEN
                v_out.reason := 'INSUFFICIENT_CREDITS';
                v_out.figure_micros := least(v_live, v_cost);
            END IF;
        END IF;

        -- The member's cap for its day or month (members.check_room, for holds).
        IF v_out.reason IS NULL AND p_members[i] IS NOT NULL THEN
            SELECT m.active, m.cap_micros, m.cap_period,
                   (coalesce(sum(s.spent_micros), 0) + coalesce(sum(s.held_micros), 0))::bigint
                       AS used
            INTO v_member
            FROM account_members m
            LEFT JOIN member_spend s ON s.user_id = m.user_id AND s.member_id = m.member_id
                AND s.day <= p_days[i]
                AND s.day >= CASE m.cap_period WHEN 'day' THEN p_days[i]
                                               ELSE date_trunc('month', p_days[i])::date END
            WHERE m.user_id = v_user AND m.member_id = p_members[i]
            GROUP BY m.user_id, m.member_id;
            IF NOT FOUND OR NOT v_member.active THEN
                v_out.reason := 'MEMBER_NOT_FOUND';
            ELSIF v_member.used + v_cost > v_member.cap_micros THEN
                v_out.reason := 'MEMBER_CAP_EXCEEDED';
                v_out.figure_micros := v_member.used;
                v_out.cap_micros := v_member.cap_micros;
                v_out.cap_period := v_member.cap_period;
            END IF;
        END IF;

        IF v_out.reason IS NULL THEN
            -- The debit itself, one statement: burn-down, history row, consumptions,
            -- overdraft, balance and the day's activity.
            WITH take AS (
                SELECT t.lot_id, t.amount FROM cw_take(v_user, v_cost, v_now, p_agents[i]) t
            ), burnt AS (
                UPDATE credit_lots l SET remaining_micros = l.remaining_micros - take.amount
                FROM take WHERE l.user_id = v_user AND l.lot_id = take.lot_id
                RETURNING l.lot_id, take.amount
            ), tx AS (
                INSERT INTO credit_transactions (user_id, type, amount_micros,
                    balance_after_micros, request_id, agent_id, quantity, session_id, hold_id,
                    metadata, created_at, member_id)
                VALUES (v_user, 'debit', -v_cost, v_acct.balance_micros - v_cost,
                        p_request_ids[i], p_agents[i],
                        CASE WHEN p_priced[i] THEN p_quantities[i] END, p_sessions[i], NULL,
                        p_metadata[i]::jsonb, v_now, p_members[i])
                RETURNING transaction_id
            ), consumed AS (
                INSERT INTO lot_consumptions (user_id, transaction_id, lot_id, amount_micros)
                SELECT v_user, tx.transaction_id, burnt.lot_id, burnt.amount FROM tx, burnt
                RETURNING amount_micros
            ), overdraft AS (
                INSERT INTO debit_overdrafts (user_id, transaction_id, amount_micros,
                                              limit_micros, debt_after_micros)
                SELECT v_user, tx.transaction_id, v_od, v_acct.overdraft_limit_micros,
                       v_acct.debt_micros + v_od
                FROM tx WHERE v_od > 0
            ), account AS (
                UPDATE credits SET balance_micros = v_acct.balance_micros - v_cost,
                    updated_at = v_now, debt_micros = credits.debt_micros + v_od,
                    last_transaction_id = (SELECT transaction_id FROM tx)
                WHERE credits.user_id = v_user
                RETURNING credits.*
            ), activity AS (
                INSERT INTO user_activity (user_id, day, debit_count) VALUES (v_user, p_days[i], 1)
                ON CONFLICT (user_id, day)
                DO UPDATE SET debit_count = user_activity.debit_count + 1
                RETURNING (xmax = 0) AS first_today
            )
            -- What the debit did, the account after it, and the streak before it.
            SELECT (SELECT transaction_id FROM tx) AS d_transaction_id,
                   (SELECT coalesce(sum(amount), 0) FROM burnt)::bigint AS d_burnt,
                   (SELECT first_today FROM activity) AS d_first_today,
                   account.*,
                   s.current_days AS s_current_days, s.streak_start AS s_streak_start,
                   s.last_active_day AS s_last_active_day, s.longest_days AS s_longest_days,
                   s.grace_day AS s_grace_day
            INTO STRICT v_after
            FROM account LEFT JOIN streaks s ON s.user_id = account.user_id;
            IF v_after.d_burnt <> v_cost - v_od THEN
                RAISE EXCEPTION 'debit of % burnt % from the lots of %', v_cost, v_after.d_burnt,
                    v_user;
            END IF;
            v_out.transaction_id := v_after.d_transaction_id;
            v_out.first_today := v_after.d_first_today;
            v_out.overdraft_micros := v_od;
            v_out.streak_current_days := v_after.s_current_days;
            v_out.streak_streak_start := v_after.s_streak_start;
            v_out.streak_last_active_day := v_after.s_last_active_day;
            v_out.streak_longest_days := v_after.s_longest_days;
            v_out.streak_grace_day := v_after.s_grace_day;
            v_acct.balance_micros := v_after.balance_micros;
            v_acct.held_micros := v_after.held_micros;
            v_acct.debt_micros := v_after.debt_micros;
            v_acct.next_expiry_at := v_after.next_expiry_at;
            v_acct.updated_at := v_after.updated_at;
            v_acct.last_transaction_id := v_after.last_transaction_id;
            v_acct.overdraft_limit_micros := v_after.overdraft_limit_micros;
            v_acct.restricted_lots := v_after.restricted_lots;
        END IF;

        v_out.user_id := v_acct.user_id;
        v_out.balance_micros := v_acct.balance_micros;
        v_out.held_micros := v_acct.held_micros;
        v_out.debt_micros := v_acct.debt_micros;
        v_out.next_expiry_at := v_acct.next_expiry_at;
        v_out.created_at := v_acct.created_at;
        v_out.updated_at := v_acct.updated_at;
        v_out.last_transaction_id := v_acct.last_transaction_id;
        v_out.overdraft_limit_micros := v_acct.overdraft_limit_micros;
        v_out.restricted_lots := v_acct.restricted_lots;
        RETURN NEXT v_out;

        -- A malformed item ends the call (the server aborts the batch); the streak of an
        -- account's first debit today is the server's to do before its next debit.
        EXIT WHEN v_out.reason = 'INVALID_ARGUMENT';
        EXIT WHEN v_out.first_today AND p_more[i];
    END LOOP;
END
$$;
