-- Fixes from a review of the ledger core, subscription periods and events.

-- The carry-over cap a period's carry-over was settled at (the allotment it was capped to).
-- Credits that come back later to that period's lot (a void, an expired hold, the unspent
-- part of a capture, a reversal) count against it: what would take the carried credits above
-- it expires at once. NULL for periods settled before the cap was recorded.
ALTER TABLE subscription_periods
    ADD COLUMN carry_cap_micros bigint CHECK (carry_cap_micros >= 0);
