-- Ready to distribute by user_id (e.g. Citus, every table of an account on one shard).
--
-- A unique index can only be enforced on one shard when it contains the distribution column,
-- and a foreign key between distributed tables only when it joins on it. So:
--
-- * holds are unique per (user_id, hold_id), their primary key: Capture and Void name the
--   account, so no lookup needs a hold_id alone (a random UUID v4 does not collide).
-- * a referral names its referrer by user_id, but that account lives on another shard: the
--   referrer's existence is checked by the redemption itself (it finds the referrer through
--   the referrer's code, whose row references the referrer's account).
DROP INDEX holds_hold_id;
ALTER TABLE referrals DROP CONSTRAINT referrals_referrer_user_id_fkey;
