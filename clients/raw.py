"""The raw RPCs, one namespace per service: ``client.wallet.Debit(DebitRequest(...))``.

Why namespaces named after the services, with methods named after the RPCs: they read like the
generated stubs (``WalletServiceStub(channel).Debit``), so code written against the protos
ports directly, yet every call still gets the client's deadline, retry policy, credentials and
typed exceptions. Every RPC of the three services is here, including the billing ones that have
no keyword method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from creditwallet.client import rpc_table
from creditwallet.client.binding import raw_async, raw_sync
from creditwallet.client.rpc_table import RequestT, ResponseT, Rpc

if TYPE_CHECKING:
    from creditwallet.client.wallet import AsyncCreditWalletClient, CreditWalletClient


class AsyncServiceRpcs:
    """Base of the async namespaces: delegates each call to the client."""

    def __init__(self, client: AsyncCreditWalletClient) -> None:
        self._client = client

    async def call(self, rpc: Rpc[RequestT, ResponseT], request: RequestT) -> ResponseT:
        return await self._client.call(rpc, request)


class SyncServiceRpcs:
    """Base of the sync namespaces: delegates each call to the client."""

    def __init__(self, client: CreditWalletClient) -> None:
        self._client = client

    def call(self, rpc: Rpc[RequestT, ResponseT], request: RequestT) -> ResponseT:
        return self._client.call(rpc, request)


class AsyncWalletRpcs(AsyncServiceRpcs):
    """creditwallet.v1.WalletService (scope agent)."""

    EnsureAccount = raw_async(rpc_table.ENSURE_ACCOUNT)
    GetBalance = raw_async(rpc_table.GET_BALANCE)
    Debit = raw_async(rpc_table.DEBIT)
    BatchDebit = raw_async(rpc_table.BATCH_DEBIT)
    Authorize = raw_async(rpc_table.AUTHORIZE)
    Capture = raw_async(rpc_table.CAPTURE)
    Void = raw_async(rpc_table.VOID)
    ListTransactions = raw_async(rpc_table.LIST_TRANSACTIONS)
    GetUsage = raw_async(rpc_table.GET_USAGE)
    GetStreak = raw_async(rpc_table.GET_STREAK)
    GetReferralCode = raw_async(rpc_table.GET_REFERRAL_CODE)
    RedeemReferralCode = raw_async(rpc_table.REDEEM_REFERRAL_CODE)


class AsyncBillingRpcs(AsyncServiceRpcs):
    """creditwallet.v1.BillingService (scope billing)."""

    RecordPurchase = raw_async(rpc_table.RECORD_PURCHASE)
    SyncSubscription = raw_async(rpc_table.SYNC_SUBSCRIPTION)
    RecordPaymentFailure = raw_async(rpc_table.RECORD_PAYMENT_FAILURE)
    RecordRefund = raw_async(rpc_table.RECORD_REFUND)
    Rollover = raw_async(rpc_table.ROLLOVER)
    RecordAutoRechargePayment = raw_async(rpc_table.RECORD_AUTO_RECHARGE_PAYMENT)


class AsyncAdminRpcs(AsyncServiceRpcs):
    """creditwallet.v1.AdminService (scope admin)."""

    Grant = raw_async(rpc_table.GRANT)
    ReverseDebit = raw_async(rpc_table.REVERSE_DEBIT)
    SetAgentPrice = raw_async(rpc_table.SET_AGENT_PRICE)
    SetOverdraftLimit = raw_async(rpc_table.SET_OVERDRAFT_LIMIT)
    ListAgentPrices = raw_async(rpc_table.LIST_AGENT_PRICES)
    GetStats = raw_async(rpc_table.GET_STATS)
    SetMember = raw_async(rpc_table.SET_MEMBER)
    ListMembers = raw_async(rpc_table.LIST_MEMBERS)
    VerifyLedger = raw_async(rpc_table.VERIFY_LEDGER)
    SetBalanceAlert = raw_async(rpc_table.SET_BALANCE_ALERT)
    SetAutoRecharge = raw_async(rpc_table.SET_AUTO_RECHARGE)
    ListEvents = raw_async(rpc_table.LIST_EVENTS)
    ReplayEvents = raw_async(rpc_table.REPLAY_EVENTS)
    ListWebhookEndpoints = raw_async(rpc_table.LIST_WEBHOOK_ENDPOINTS)
    GetRolloverProgress = raw_async(rpc_table.GET_ROLLOVER_PROGRESS)
    ListHolds = raw_async(rpc_table.LIST_HOLDS)
    GetDailyTotals = raw_async(rpc_table.GET_DAILY_TOTALS)


class SyncWalletRpcs(SyncServiceRpcs):
    """creditwallet.v1.WalletService (scope agent)."""

    EnsureAccount = raw_sync(rpc_table.ENSURE_ACCOUNT)
    GetBalance = raw_sync(rpc_table.GET_BALANCE)
    Debit = raw_sync(rpc_table.DEBIT)
    BatchDebit = raw_sync(rpc_table.BATCH_DEBIT)
    Authorize = raw_sync(rpc_table.AUTHORIZE)
    Capture = raw_sync(rpc_table.CAPTURE)
    Void = raw_sync(rpc_table.VOID)
    ListTransactions = raw_sync(rpc_table.LIST_TRANSACTIONS)
    GetUsage = raw_sync(rpc_table.GET_USAGE)
    GetStreak = raw_sync(rpc_table.GET_STREAK)
    GetReferralCode = raw_sync(rpc_table.GET_REFERRAL_CODE)
    RedeemReferralCode = raw_sync(rpc_table.REDEEM_REFERRAL_CODE)


class SyncBillingRpcs(SyncServiceRpcs):
    """creditwallet.v1.BillingService (scope billing)."""

    RecordPurchase = raw_sync(rpc_table.RECORD_PURCHASE)
    SyncSubscription = raw_sync(rpc_table.SYNC_SUBSCRIPTION)
    RecordPaymentFailure = raw_sync(rpc_table.RECORD_PAYMENT_FAILURE)
    RecordRefund = raw_sync(rpc_table.RECORD_REFUND)
    Rollover = raw_sync(rpc_table.ROLLOVER)
    RecordAutoRechargePayment = raw_sync(rpc_table.RECORD_AUTO_RECHARGE_PAYMENT)


class SyncAdminRpcs(SyncServiceRpcs):
    """creditwallet.v1.AdminService (scope admin)."""

    Grant = raw_sync(rpc_table.GRANT)
    ReverseDebit = raw_sync(rpc_table.REVERSE_DEBIT)
    SetAgentPrice = raw_sync(rpc_table.SET_AGENT_PRICE)
    SetOverdraftLimit = raw_sync(rpc_table.SET_OVERDRAFT_LIMIT)
    ListAgentPrices = raw_sync(rpc_table.LIST_AGENT_PRICES)
    GetStats = raw_sync(rpc_table.GET_STATS)
    SetMember = raw_sync(rpc_table.SET_MEMBER)
    ListMembers = raw_sync(rpc_table.LIST_MEMBERS)
    VerifyLedger = raw_sync(rpc_table.VERIFY_LEDGER)
    SetBalanceAlert = raw_sync(rpc_table.SET_BALANCE_ALERT)
    SetAutoRecharge = raw_sync(rpc_table.SET_AUTO_RECHARGE)
    ListEvents = raw_sync(rpc_table.LIST_EVENTS)
    ReplayEvents = raw_sync(rpc_table.REPLAY_EVENTS)
    ListWebhookEndpoints = raw_sync(rpc_table.LIST_WEBHOOK_ENDPOINTS)
    GetRolloverProgress = raw_sync(rpc_table.GET_ROLLOVER_PROGRESS)
    ListHolds = raw_sync(rpc_table.LIST_HOLDS)
    GetDailyTotals = raw_sync(rpc_table.GET_DAILY_TOTALS)
