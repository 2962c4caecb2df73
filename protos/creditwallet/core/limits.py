"""Every bound of every credit-wallet process, in one place, units last in the names.

Why a module of constants: a limit that is written down can be reviewed, tested and
changed once. ``_check`` at the bottom keeps the relations between them true; it raises
rather than asserts, so ``python -O`` cannot strip it.

Sections: the wire (shared by all), the server, the gateway, the client.
"""

from typing import Final

from creditwallet.core.units import INT64_MAX, MICROS_PER_CREDIT

__all__ = ["INT64_MAX", "MICROS_PER_CREDIT"]  # re-exported: limits are stated in micros

# Identifiers.
USER_ID_LENGTH_MAX: Final = 128
REQUEST_ID_LENGTH_MAX: Final = 128
AGENT_ID_LENGTH_MAX: Final = 128
SESSION_ID_LENGTH_MAX: Final = 128
HOLD_ID_LENGTH_MAX: Final = 64
UNIT_LENGTH_MAX: Final = 64
METADATA_KEYS_MAX: Final = 16
METADATA_KEY_LENGTH_MAX: Final = 64
METADATA_VALUE_LENGTH_MAX: Final = 512
PROVIDER_ID_LENGTH_MAX: Final = 255

# Amounts: one request never moves more than a billion credits.
AMOUNT_MICROS_MAX: Final = 10**9 * MICROS_PER_CREDIT
QUANTITY_MAX: Final = 10**9

# Lots: burn-down priority (lower burns first) and the agents a restricted lot may pay for.
LOT_PRIORITY_MIN: Final = 0
LOT_PRIORITY_MAX: Final = 100
LOT_PRIORITY_DEFAULT: Final = 50
LOT_AGENT_IDS_MAX: Final = 32

# Overdraft: how far below zero an operator may let an account's debits go.
OVERDRAFT_LIMIT_MICROS_MAX: Final = 10**6 * MICROS_PER_CREDIT

# Holds.
HOLD_TTL_SECONDS_DEFAULT: Final = 15 * 60
HOLD_TTL_SECONDS_MAX: Final = 24 * 60 * 60

# Pages.
PAGE_SIZE_DEFAULT: Final = 50
PAGE_SIZE_MAX: Final = 500
PRICES_PAGE_SIZE_DEFAULT: Final = 100
PAGE_TOKEN_LENGTH_MAX: Final = 256
# GetUsage: groups per page (30 days of 30 agents fit in one), and the longest range in days.
USAGE_PAGE_SIZE_DEFAULT: Final = 100
USAGE_PAGE_SIZE_MAX: Final = 1000
USAGE_RANGE_DAYS_MAX: Final = 366
# GetUsage's page token carries the last group's keys (a day and three ids) and the request's.
USAGE_PAGE_TOKEN_LENGTH_MAX: Final = 2048
# Team wallets: a member's id (a cap is an amount: AMOUNT_MICROS_MAX), ListMembers' page.
MEMBER_ID_LENGTH_MAX: Final = 128
MEMBERS_PAGE_SIZE_DEFAULT: Final = 100

# Idempotency records are kept this long; the promise to callers is at least 7 days.
IDEMPOTENCY_RETENTION_DAYS: Final = 30
IDEMPOTENCY_PURGE_BATCH_ROWS: Final = 10_000

# Database.
DB_POOL_SIZE_MIN: Final = 2
DB_POOL_SIZE_MAX: Final = 20
DB_COMMAND_TIMEOUT_SECONDS: Final = 10.0
DB_ACQUIRE_TIMEOUT_SECONDS: Final = 5.0
DB_CONNECT_TIMEOUT_SECONDS: Final = 5.0
DB_TRANSACTION_RETRIES_MAX: Final = 5
# A retried transaction (serialization failure, deadlock) first sleeps this long, doubling.
DB_TRANSACTION_RETRY_BACKOFF_SECONDS: Final = 0.001
# A pooled connection idle this long is closed (PostgreSQL frees its memory); one connection
# serves at most this many queries before it is replaced; prepared statements kept per
# connection (asyncpg's LRU).
DB_CONNECTION_IDLE_SECONDS_MAX: Final = 300.0
DB_CONNECTION_QUERIES_MAX: Final = 1_000_000
DB_STATEMENT_CACHE_SIZE: Final = 100
# The metrics endpoint's thread gets this long to stop.
METRICS_STOP_SECONDS: Final = 5.0
# How often the supervisors (`make run`, GRPC_WORKERS) look at their processes.
SUPERVISOR_POLL_SECONDS: Final = 0.2
# A call that carries a deadline further away than this is treated as carrying none.
GRPC_DEADLINE_NONE_SECONDS: Final = 10 * 365 * 24 * 3600
# Referral codes: draws of a fresh code before giving up (a collision has probability
# ~ codes / 30**8, so a few draws always suffice).
REFERRAL_CODE_ATTEMPTS_MAX: Final = 8

# Health: how often the database is pinged, and how long a ping may take.
HEALTH_PROBE_INTERVAL_SECONDS: Final = 2.0
HEALTH_PROBE_TIMEOUT_SECONDS: Final = 2.0

# gRPC.
GRPC_MESSAGE_BYTES_MAX: Final = 4 * 1024 * 1024
GRPC_SHUTDOWN_GRACE_SECONDS: Final = 10.0
GRPC_CONCURRENT_RPCS_MAX: Final = 2048

# Verification report.
VERIFY_VIOLATIONS_MAX: Final = 1000

# Rollover: accounts (or ended subscription periods) per chunk, each chunk one transaction.
ROLLOVER_CHUNK_ACCOUNTS: Final = 2000
# Rollover chunks in flight at once, each on its own connection (of the server's pool).
ROLLOVER_WORKERS: Final = 2

# Subscription billing schedules. A period spans at most this many of its intervals (the
# provider's interval_count; Stripe's longest period is three years, 1095 days).
BILLING_INTERVAL_COUNT_MAX: Final = 1095

# Group commit of debits: at most this many debits share one transaction, and at most this
# many such transactions run at once (each holds one pooled connection). Measured on the
# bench (spread, 64 callers): 2 x 64 gave 1676 debits/s, 2 x 32 1575, 1 x 32 1533,
# 4 x 32 1211, 8 x 32 983 — more concurrent batches only add contention; again with each
# batch in one database call (the batcher alone, docs/performance.md): 1 in flight 1035/s,
# 2 1181, 4 987, 8 762. There is no timer:
# debits that arrive while the batches in flight are busy form the next batch, so a lone
# debit never waits and a busy server commits many debits per WAL flush.
DEBIT_BATCH_MAX: Final = 64
DEBIT_BATCHES_IN_FLIGHT_MAX: Final = 2


# Performance: batches of debits in one call, worker processes, their connections.
# BatchDebit takes at most this many debits (each its own request_id and outcome); a full
# batch of debits with 16 metadata keys of full length stays under GRPC_MESSAGE_BYTES_MAX only
# with short values, so large batches should carry little metadata.
BATCH_DEBIT_ITEMS_MAX: Final = 1000
# GRPC_WORKERS: server processes on one port (SO_REUSEPORT); default one per core, at most
# this many (past it, PostgreSQL is the limit: run more servers behind PgBouncer instead).
GRPC_WORKERS_MAX: Final = 10
# The database connections of one server, all its workers together: each worker's pool gets
# an equal share, at most DB_POOL_SIZE_MAX and at least DB_POOL_SIZE_WORKER_MIN (its debit
# batches in flight, plus reads). PostgreSQL serves best at a few active connections per core
# of its own; past that, more connections only queue inside it (put PgBouncer in front of
# many servers).
DB_CONNECTIONS_PER_SERVER_MAX: Final = 40
DB_POOL_SIZE_WORKER_MIN: Final = DEBIT_BATCHES_IN_FLIGHT_MAX + 2
# How long the supervisor of the workers waits for all of them to stop after a signal.
GRPC_WORKERS_STOP_SECONDS: Final = GRPC_SHUTDOWN_GRACE_SECONDS + 10.0


# Events out (server/events/): the outbox's sequencer, webhook delivery, the event stream and
# auto-recharge. Background loops poll the database at most this often (no LISTEN/NOTIFY,
# which would serialize every committing writer on the notification queue's lock).
EVENTS_POLL_SECONDS_DEFAULT: Final = 0.2
EVENTS_POLL_SECONDS_MIN: Final = 0.01
EVENTS_POLL_SECONDS_MAX: Final = 60.0
# Events given positions per sequencer pass (one transaction).
EVENTS_SEQUENCE_BATCH_MAX: Final = 2000
# Connections of the events workers' own pool (never the RPCs' pool).
EVENTS_POOL_SIZE_MAX: Final = 8
# Concurrent webhook deliveries per server process (each holds one of those connections).
WEBHOOK_DELIVERIES_IN_FLIGHT_MAX: Final = 4
# Due lanes looked at per claim.
WEBHOOK_CLAIM_CANDIDATES_MAX: Final = 32
# One delivery attempt: connect and answer within this.
WEBHOOK_TIMEOUT_SECONDS: Final = 10.0
# Retries: 10 s, 20 s, 40 s, ... at most 6 h apart, for 3 days from the first attempt.
WEBHOOK_RETRY_INITIAL_SECONDS: Final = 10.0
WEBHOOK_RETRY_MAX_SECONDS: Final = 6 * 60 * 60.0
WEBHOOK_RETRY_WINDOW_SECONDS: Final = 3 * 24 * 60 * 60.0
# A receiver's answer is read up to this size (for the error message only).
WEBHOOK_RESPONSE_BYTES_MAX: Final = 4096
WEBHOOK_ENDPOINTS_MAX: Final = 32
# A webhook endpoint's signing key (whsec_ + base64): this many bytes (Standard Webhooks).
WEBHOOK_KEY_BYTES_MIN: Final = 24
WEBHOOK_KEY_BYTES_MAX: Final = 64
# Event streams open at once per server process, and events per stream read.
EVENT_STREAMS_MAX: Final = 64
EVENT_STREAM_PAGE_MAX: Final = 500
EVENT_TYPES_FILTER_MAX: Final = 32
EVENT_TYPE_LENGTH_MAX: Final = 64
EVENT_CURSOR_LENGTH_MAX: Final = 32
# credits.expiring: lead time default and bound; lots noticed per scan.
CREDITS_EXPIRING_LEAD_DAYS_DEFAULT: Final = 3
CREDITS_EXPIRING_LEAD_DAYS_MAX: Final = 90
CREDITS_EXPIRING_SCAN_BATCH_MAX: Final = 1000
# balance.low default threshold (1 credit).
BALANCE_LOW_THRESHOLD_MICROS_DEFAULT: Final = MICROS_PER_CREDIT
# Auto-recharge: the Stripe call's timeout; retries of an attempt Stripe could not answer
# (same idempotency key, so at most one charge), 30 s doubling to at most 1 h, at most 20
# tries (well inside Stripe's 24 h idempotency-key lifetime); after a failed payment no new
# attempt for 1 h doubling per consecutive failure; the rule turns off after this many.
AUTO_RECHARGE_STRIPE_TIMEOUT_SECONDS: Final = 10.0
AUTO_RECHARGE_RETRY_INITIAL_SECONDS: Final = 30.0
AUTO_RECHARGE_RETRY_MAX_SECONDS: Final = 60 * 60.0
AUTO_RECHARGE_TRIES_MAX: Final = 20
AUTO_RECHARGE_BACKOFF_INITIAL_SECONDS: Final = 60 * 60.0
AUTO_RECHARGE_FAILURES_MAX_DEFAULT: Final = 3
AUTO_RECHARGE_MONTHLY_LIMIT_CENTS_MAX: Final = 10**9

# The gateway (webhook_gateway/).
# Its deadline on a ledger RPC: well under Stripe's ~20 s webhook timeout.
GATEWAY_RPC_TIMEOUT_SECONDS: Final = 8.0
# Stripe API calls (line items, invoices, prices) get at most this long.
GATEWAY_STRIPE_TIMEOUT_SECONDS: Final = 5.0
# The rollover of every account may take a while (it is chunked and resumable).
GATEWAY_ROLLOVER_TIMEOUT_SECONDS: Final = 300.0
# Webhook bodies above this are refused with 413 (Stripe's events are a few KiB).
GATEWAY_BODY_BYTES_MAX: Final = 1024 * 1024
# Stripe's signature tolerance, applied both ways (the library only checks the past).
GATEWAY_SIGNATURE_TOLERANCE_SECONDS: Final = 300
# Stripe gives up on a webhook delivery that takes longer than this.
STRIPE_WEBHOOK_TIMEOUT_SECONDS: Final = 20.0

# The client (clients/).
# Deadlines: every attempt carries one; nothing waits forever on a stuck server.
CLIENT_TIMEOUT_SECONDS_DEFAULT: Final = 5.0
CLIENT_TIMEOUT_SECONDS_MAX: Final = 3600.0
# Retries of UNAVAILABLE, always with the identical request (so the same request_id).
CLIENT_RETRIES_DEFAULT: Final = 3
CLIENT_RETRIES_MAX: Final = 10
# Exponential backoff with jitter: attempt n (0-based) sleeps a random time in
# [ceiling / 2, ceiling], ceiling = min(INITIAL * MULTIPLIER**n, MAX). Jitter keeps many
# clients that lost the server together from hammering it together when it comes back.
CLIENT_RETRY_BACKOFF_INITIAL_SECONDS: Final = 0.05
CLIENT_RETRY_BACKOFF_MULTIPLIER: Final = 2.0
CLIENT_RETRY_BACKOFF_MAX_SECONDS: Final = 2.0
# The server sets its message limits explicitly; the client matches them by default.
CLIENT_MESSAGE_BYTES_MAX_DEFAULT: Final = GRPC_MESSAGE_BYTES_MAX
# How long close() lets calls in flight finish.
CLIENT_CLOSE_GRACE_SECONDS: Final = 1.0
# A channel that lost its server tries again after INITIAL, backing off to at most MAX.
CLIENT_RECONNECT_BACKOFF_INITIAL_SECONDS: Final = 0.1
CLIENT_RECONNECT_BACKOFF_MAX_SECONDS: Final = 2.0

# `make run`: how long the processes get to stop after Ctrl-C before they are killed.
DEVRUN_STOP_GRACE_SECONDS: Final = 15.0
# `make run`: how long the migrations may take before the server starts.
DEVRUN_MIGRATE_TIMEOUT_SECONDS: Final = 120.0


# The operators' overview (GetDailyTotals): the window in UTC days and the agents ranked.
DAILY_TOTALS_DAYS_DEFAULT: Final = 30
DAILY_TOTALS_DAYS_MAX: Final = 90
TOP_AGENTS_DEFAULT: Final = 10
TOP_AGENTS_MAX: Final = 100

# The operator console (creditwallet-console). Sessions live in its memory only: at most
# this many at once (signing in beyond it drops the oldest), each for at most this long, and
# ended sooner when unused for the idle time.
CONSOLE_SESSIONS_MAX: Final = 1000
CONSOLE_SESSION_LIFETIME_SECONDS: Final = 8 * 60 * 60
CONSOLE_SESSION_IDLE_SECONDS: Final = 30 * 60
# Random bytes of a session id and of its CSRF token.
CONSOLE_SESSION_ID_BYTES: Final = 32
CONSOLE_CSRF_TOKEN_BYTES: Final = 32
# Sign-in attempts refused per client address before it waits CONSOLE_SIGN_IN_PAUSE_SECONDS,
# and how many addresses that count remembers.
CONSOLE_SIGN_IN_FAILURES_MAX: Final = 10
CONSOLE_SIGN_IN_PAUSE_SECONDS: Final = 60.0
CONSOLE_SIGN_IN_ADDRESSES_MAX: Final = 10_000
# One request: its form body, how long the console waits for one ledger call.
CONSOLE_FORM_BYTES_MAX: Final = 16 * 1024
CONSOLE_RPC_TIMEOUT_SECONDS: Final = 10.0
# Rows per history page, and the history read for an account's 30-day charts: at most this
# many pages of PAGE_SIZE_MAX rows (the chart says so when the account has more).
CONSOLE_HISTORY_PAGE_SIZE: Final = 25
CONSOLE_CHART_DAYS: Final = 30
CONSOLE_CHART_PAGES_MAX: Final = 20
# Agents drawn as their own series in an account's spend chart; the rest are "other".
CONSOLE_CHART_AGENTS_MAX: Final = 6
# Rows shown of pending holds, agent prices, webhook endpoints and failed deliveries.
CONSOLE_LIST_ROWS_MAX: Final = 100
# The note an operator writes on a grant or reversal (recorded as its metadata "note").
CONSOLE_NOTE_LENGTH_MAX: Final = METADATA_VALUE_LENGTH_MAX

# The edges of the server (hostile callers). Every call is authorised on its headers before its
# body is read; these bound what a caller, authenticated or not, can make the server hold.
# The largest valid request: every string field at its limit, metadata full, with protobuf's
# framing (a tag and a length per field, a tag and a length per map entry and its two halves).
_FRAMING_BYTES_PER_FIELD: Final = 4
LARGEST_REQUEST_BYTES: Final = (
    USER_ID_LENGTH_MAX
    + REQUEST_ID_LENGTH_MAX
    + AGENT_ID_LENGTH_MAX
    + SESSION_ID_LENGTH_MAX
    + MEMBER_ID_LENGTH_MAX
    + 4 * PROVIDER_ID_LENGTH_MAX
    + METADATA_KEYS_MAX
    * (METADATA_KEY_LENGTH_MAX + METADATA_VALUE_LENGTH_MAX + 3 * _FRAMING_BYTES_PER_FIELD)
    + 16 * (_FRAMING_BYTES_PER_FIELD + 10)  # up to 16 numeric fields of at most 10 bytes
)
# What the server accepts in one request message: the largest valid request with headroom
# (x4, and a power of two), so a field added later does not break the wire; anything larger is
# refused by gRPC before it is buffered. Responses (pages of history) may be larger.
GRPC_RECEIVE_BYTES_MAX: Final = 64 * 1024
# BatchDebit's one message carries up to BATCH_DEBIT_ITEMS_MAX debits, so it may be larger: a
# debit with UUID ids, an agent, a session and a few metadata entries is about 200 bytes, so
# 1,000 of them take about 200 KB; this bound allows about 1 KiB a debit. It is gRPC's own bound
# (the largest any method takes); the gate holds every other method to GRPC_RECEIVE_BYTES_MAX,
# refusing a larger message with MESSAGE_TOO_LARGE before it is parsed. Clients split a batch
# by bytes as well as by count (creditwallet.client.debitfile).
BATCH_DEBIT_BYTES_MAX: Final = 1024 * 1024
# A page of a listing ends before the row that would take its rows past this many bytes (the
# next_page_token then resumes at that row): 500 history rows with full metadata are about
# 4.9 MB, more than an answer may be (GRPC_MESSAGE_BYTES_MAX, and most clients' default).
# One row is far smaller, so a page always holds at least one.
PAGE_BYTES_MAX: Final = 3 * 1024 * 1024
# Headers of one call (soft limit: larger ones are refused; hard: the connection is reset).
# A bearer token and gRPC's own headers need well under 1 KiB.
GRPC_METADATA_BYTES_MAX: Final = 8 * 1024
GRPC_METADATA_BYTES_ABSOLUTE_MAX: Final = 16 * 1024
# Calls open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). Above what a
# busy client bursts on a new connection (hundreds of concurrent debits): until the client has
# the server's SETTINGS, the streams past this are refused (UNAVAILABLE), not queued.
GRPC_STREAMS_PER_CONNECTION_MAX: Final = 1024
# A call's request message must arrive this soon after its headers (or its deadline, if
# sooner): a caller that sends headers and no body holds a slot for at most this long.
GRPC_REQUEST_READ_TIMEOUT_SECONDS: Final = 5.0
# A unary call that carries no deadline gets this one; a stream (a watch, an event feed)
# lives at most GRPC_STREAM_DEADLINE_SECONDS_DEFAULT and is then ended (clients resume).
GRPC_DEADLINE_SECONDS_DEFAULT: Final = 30.0
GRPC_STREAM_DEADLINE_SECONDS_DEFAULT: Final = 600.0
# Health and reflection are open (no token) for load balancers and grpcurl, so they get a
# budget of their own inside the server's: at most this many at once, the rest refused.
GRPC_OPEN_CALLS_MAX: Final = 32
# Connections: the server pings an idle-looking connection every KEEPALIVE_TIME and drops it
# when no answer comes within KEEPALIVE_TIMEOUT; a client may ping at most every
# PING_INTERVAL_MIN (more often, twice, and it is disconnected). A connection with no call for
# IDLE_MAX is closed; any connection is asked to reconnect after AGE_MAX (spreading load over
# replicas, and ending whatever a slow caller held), and closed AGE_GRACE later.
GRPC_KEEPALIVE_TIME_SECONDS: Final = 60.0
GRPC_KEEPALIVE_TIMEOUT_SECONDS: Final = 20.0
GRPC_CLIENT_PING_INTERVAL_MIN_SECONDS: Final = 30.0
GRPC_PING_STRIKES_MAX: Final = 2
GRPC_CONNECTION_IDLE_MAX_SECONDS: Final = 300.0
GRPC_CONNECTION_AGE_MAX_SECONDS: Final = 1800.0
GRPC_CONNECTION_AGE_GRACE_SECONDS: Final = 30.0
# Bearer tokens: at least this long (a random 24-byte token in base64 is 32 characters).
TOKEN_LENGTH_MIN: Final = 32
TOKENS_PER_SCOPE_MAX: Final = 16
TOKEN_LABEL_LENGTH_MAX: Final = 32
# The gateway's HTTP side: a request's headers must arrive within HEADERS_TIMEOUT of the
# connection (or of the previous response), its body within BODY_TIMEOUT; at most
# CONNECTIONS_MAX connections are open at once (more are closed at accept).
GATEWAY_HEADERS_TIMEOUT_SECONDS: Final = 10.0
GATEWAY_BODY_TIMEOUT_SECONDS: Final = 10.0
GATEWAY_CONNECTIONS_MAX: Final = 256
# A webhook's JSON may nest at most this deep (Stripe's objects nest fewer than 10 levels).
GATEWAY_JSON_DEPTH_MAX: Final = 64


# Start-up and the command line (the front door).
# The CLI: pages it reads at most for one listing (--all, `prices list`: 500,000 rows), the
# width of its tables when stdout is not a terminal, the rows of a listing by default.
CLI_PAGES_MAX: Final = 1000
CLI_PLAIN_WIDTH: Final = 200
CLI_LIST_ROWS_DEFAULT: Final = 20
# `creditwallet usage`: the days it reports by default, and the width of its chart's longest bar.
CLI_USAGE_DAYS_DEFAULT: Final = 30
CLI_USAGE_CHART_WIDTH: Final = 40
# The server waits this long for a database that is not up yet, retrying with backoff from
# INITIAL doubling up to MAX between attempts, before it gives up with one line.
DB_WAIT_SECONDS_MAX: Final = 30.0
DB_WAIT_BACKOFF_INITIAL_SECONDS: Final = 0.25
DB_WAIT_BACKOFF_MAX_SECONDS: Final = 2.0
# The CLI's rollover: its deadline (a rollover of 100,000 accounts takes seconds, millions
# take minutes), and how often it reads the rollover's progress for its progress bar.
CLI_ROLLOVER_TIMEOUT_SECONDS: Final = 1800.0
CLI_PROGRESS_POLL_SECONDS: Final = 0.5
# `creditwallet dev webhook`: how long it waits for the gateway's answer.
CLI_WEBHOOK_TIMEOUT_SECONDS: Final = 30.0


class LimitsError(Exception):
    """Two bounds contradict each other: a programming error caught at import."""


def _check() -> None:
    relations = {
        "HOLD_TTL_SECONDS_DEFAULT <= HOLD_TTL_SECONDS_MAX": (
            HOLD_TTL_SECONDS_DEFAULT <= HOLD_TTL_SECONDS_MAX
        ),
        "PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX": PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX,
        "PRICES_PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX": PRICES_PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX,
        "AMOUNT_MICROS_MAX < INT64_MAX": AMOUNT_MICROS_MAX < INT64_MAX,
        "LOT_PRIORITY_MIN <= LOT_PRIORITY_DEFAULT <= LOT_PRIORITY_MAX": (
            LOT_PRIORITY_MIN <= LOT_PRIORITY_DEFAULT <= LOT_PRIORITY_MAX
        ),
        "OVERDRAFT_LIMIT_MICROS_MAX <= AMOUNT_MICROS_MAX": (
            OVERDRAFT_LIMIT_MICROS_MAX <= AMOUNT_MICROS_MAX
        ),
        "USAGE_PAGE_SIZE_DEFAULT <= USAGE_PAGE_SIZE_MAX": (
            USAGE_PAGE_SIZE_DEFAULT <= USAGE_PAGE_SIZE_MAX
        ),
        "MEMBERS_PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX": MEMBERS_PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX,
        "DB_POOL_SIZE_MIN <= DB_POOL_SIZE_MAX": DB_POOL_SIZE_MIN <= DB_POOL_SIZE_MAX,
        "1 <= ROLLOVER_WORKERS < DB_POOL_SIZE_WORKER_MIN": (
            1 <= ROLLOVER_WORKERS < DB_POOL_SIZE_WORKER_MIN
        ),
        "IDEMPOTENCY_RETENTION_DAYS >= 7": IDEMPOTENCY_RETENTION_DAYS >= 7,
        "HEALTH_PROBE_TIMEOUT_SECONDS <= HEALTH_PROBE_INTERVAL_SECONDS": (
            HEALTH_PROBE_TIMEOUT_SECONDS <= HEALTH_PROBE_INTERVAL_SECONDS
        ),
        "DEBIT_BATCHES_IN_FLIGHT_MAX < DB_POOL_SIZE_MAX": (
            DEBIT_BATCHES_IN_FLIGHT_MAX < DB_POOL_SIZE_MAX
        ),
        "DB_POOL_SIZE_MIN <= DB_POOL_SIZE_WORKER_MIN <= DB_POOL_SIZE_MAX": (
            DB_POOL_SIZE_MIN <= DB_POOL_SIZE_WORKER_MIN <= DB_POOL_SIZE_MAX
        ),
        "GRPC_WORKERS_MAX * DB_POOL_SIZE_WORKER_MIN <= DB_CONNECTIONS_PER_SERVER_MAX": (
            GRPC_WORKERS_MAX * DB_POOL_SIZE_WORKER_MIN <= DB_CONNECTIONS_PER_SERVER_MAX
        ),
        "DEBIT_BATCH_MAX <= BATCH_DEBIT_ITEMS_MAX": DEBIT_BATCH_MAX <= BATCH_DEBIT_ITEMS_MAX,
        "gateway RPC + Stripe API deadlines < Stripe's webhook timeout": (
            GATEWAY_RPC_TIMEOUT_SECONDS + GATEWAY_STRIPE_TIMEOUT_SECONDS
            < STRIPE_WEBHOOK_TIMEOUT_SECONDS
        ),
        "EVENTS_POLL_SECONDS_MIN <= EVENTS_POLL_SECONDS_DEFAULT <= EVENTS_POLL_SECONDS_MAX": (
            EVENTS_POLL_SECONDS_MIN <= EVENTS_POLL_SECONDS_DEFAULT <= EVENTS_POLL_SECONDS_MAX
        ),
        "WEBHOOK_DELIVERIES_IN_FLIGHT_MAX < EVENTS_POOL_SIZE_MAX": (
            WEBHOOK_DELIVERIES_IN_FLIGHT_MAX < EVENTS_POOL_SIZE_MAX
        ),
        "WEBHOOK_RETRY_INITIAL_SECONDS <= WEBHOOK_RETRY_MAX_SECONDS <= window": (
            WEBHOOK_RETRY_INITIAL_SECONDS
            <= WEBHOOK_RETRY_MAX_SECONDS
            <= WEBHOOK_RETRY_WINDOW_SECONDS
        ),
        "AUTO_RECHARGE tries fit in Stripe's 24 h idempotency window": (
            AUTO_RECHARGE_TRIES_MAX * AUTO_RECHARGE_RETRY_MAX_SECONDS < 24 * 60 * 60
        ),
        "CREDITS_EXPIRING_LEAD_DAYS_DEFAULT <= CREDITS_EXPIRING_LEAD_DAYS_MAX": (
            CREDITS_EXPIRING_LEAD_DAYS_DEFAULT <= CREDITS_EXPIRING_LEAD_DAYS_MAX
        ),
        "0 <= CLIENT_RETRIES_DEFAULT <= CLIENT_RETRIES_MAX": (
            0 <= CLIENT_RETRIES_DEFAULT <= CLIENT_RETRIES_MAX
        ),
        "0 < CLIENT_TIMEOUT_SECONDS_DEFAULT <= CLIENT_TIMEOUT_SECONDS_MAX": (
            0 < CLIENT_TIMEOUT_SECONDS_DEFAULT <= CLIENT_TIMEOUT_SECONDS_MAX
        ),
        "0 < DB_WAIT_BACKOFF_INITIAL <= DB_WAIT_BACKOFF_MAX < DB_WAIT_SECONDS_MAX": (
            0 < DB_WAIT_BACKOFF_INITIAL_SECONDS <= DB_WAIT_BACKOFF_MAX_SECONDS < DB_WAIT_SECONDS_MAX
        ),
        "CLIENT_TIMEOUT_SECONDS_DEFAULT <= CLI_ROLLOVER_TIMEOUT <= CLIENT_TIMEOUT_SECONDS_MAX": (
            CLIENT_TIMEOUT_SECONDS_DEFAULT
            <= CLI_ROLLOVER_TIMEOUT_SECONDS
            <= CLIENT_TIMEOUT_SECONDS_MAX
        ),
        "0 < CLIENT_RETRY_BACKOFF_INITIAL_SECONDS <= CLIENT_RETRY_BACKOFF_MAX_SECONDS": (
            0 < CLIENT_RETRY_BACKOFF_INITIAL_SECONDS <= CLIENT_RETRY_BACKOFF_MAX_SECONDS
        ),
        "4 * LARGEST_REQUEST_BYTES <= GRPC_RECEIVE_BYTES_MAX <= BATCH_DEBIT_BYTES_MAX": (
            4 * LARGEST_REQUEST_BYTES <= GRPC_RECEIVE_BYTES_MAX <= BATCH_DEBIT_BYTES_MAX
        ),
        "BATCH_DEBIT_BYTES_MAX <= GRPC_MESSAGE_BYTES_MAX": (
            BATCH_DEBIT_BYTES_MAX <= GRPC_MESSAGE_BYTES_MAX
        ),
        "4 * LARGEST_REQUEST_BYTES + PAGE_BYTES_MAX <= GRPC_MESSAGE_BYTES_MAX": (
            4 * LARGEST_REQUEST_BYTES + PAGE_BYTES_MAX <= GRPC_MESSAGE_BYTES_MAX
        ),
        "GRPC_METADATA_BYTES_MAX <= GRPC_METADATA_BYTES_ABSOLUTE_MAX": (
            GRPC_METADATA_BYTES_MAX <= GRPC_METADATA_BYTES_ABSOLUTE_MAX
        ),
        "GRPC_OPEN_CALLS_MAX < GRPC_STREAMS_PER_CONNECTION_MAX < GRPC_CONCURRENT_RPCS_MAX": (
            GRPC_OPEN_CALLS_MAX < GRPC_STREAMS_PER_CONNECTION_MAX < GRPC_CONCURRENT_RPCS_MAX
        ),
        "GRPC_REQUEST_READ_TIMEOUT_SECONDS < GRPC_DEADLINE_SECONDS_DEFAULT": (
            GRPC_REQUEST_READ_TIMEOUT_SECONDS < GRPC_DEADLINE_SECONDS_DEFAULT
        ),
        "GRPC_KEEPALIVE_TIMEOUT_SECONDS < GRPC_KEEPALIVE_TIME_SECONDS": (
            GRPC_KEEPALIVE_TIMEOUT_SECONDS < GRPC_KEEPALIVE_TIME_SECONDS
        ),
        "gateway header + body timeouts < Stripe's webhook timeout": (
            GATEWAY_HEADERS_TIMEOUT_SECONDS + GATEWAY_BODY_TIMEOUT_SECONDS
            <= STRIPE_WEBHOOK_TIMEOUT_SECONDS
        ),
        "TOP_AGENTS_DEFAULT <= TOP_AGENTS_MAX": TOP_AGENTS_DEFAULT <= TOP_AGENTS_MAX,
        "DAILY_TOTALS_DAYS_DEFAULT <= DAILY_TOTALS_DAYS_MAX": (
            DAILY_TOTALS_DAYS_DEFAULT <= DAILY_TOTALS_DAYS_MAX
        ),
        "CONSOLE_SESSION_IDLE_SECONDS <= CONSOLE_SESSION_LIFETIME_SECONDS": (
            CONSOLE_SESSION_IDLE_SECONDS <= CONSOLE_SESSION_LIFETIME_SECONDS
        ),
        "CONSOLE_HISTORY_PAGE_SIZE <= PAGE_SIZE_MAX": CONSOLE_HISTORY_PAGE_SIZE <= PAGE_SIZE_MAX,
        "CONSOLE_CHART_DAYS <= DAILY_TOTALS_DAYS_MAX": CONSOLE_CHART_DAYS <= DAILY_TOTALS_DAYS_MAX,
        "CONSOLE_LIST_ROWS_MAX <= PAGE_SIZE_MAX": CONSOLE_LIST_ROWS_MAX <= PAGE_SIZE_MAX,
        "CONSOLE_RPC_TIMEOUT_SECONDS <= CLIENT_TIMEOUT_SECONDS_MAX": (
            CONSOLE_RPC_TIMEOUT_SECONDS <= CLIENT_TIMEOUT_SECONDS_MAX
        ),
    }
    broken = [name for name, holds in relations.items() if not holds]
    if broken:
        raise LimitsError("limits contradict each other: " + "; ".join(broken))


_check()
