"""The raw RPCs, one namespace per service: ``client.wallet.Debit(DebitRequest(...))``.

Why namespaces named after the services, with methods named after the RPCs: they read like the
generated stubs (``WalletServiceStub(channel).Debit``), so code written against the protos
ports directly, yet every call still gets the client's deadline, retry policy, credentials and
typed exceptions. Every RPC of the three services is here, including the billing ones that have
no keyword method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from creditwallet.client import rpcs
from creditwallet.client.methods import raw_async, raw_sync
from creditwallet.client.rpcs import RequestT, ResponseT, Rpc

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

    EnsureAccount = raw_async(rpcs.ENSURE_ACCOUNT)
    GetBalance = raw_async(rpcs.GET_BALANCE)
    Debit = raw_async(rpcs.DEBIT)
    BatchDebit = raw_async(rpcs.BATCH_DEBIT)
    Authorize = raw_async(rpcs.AUTHORIZE)
    Capture = raw_async(rpcs.CAPTURE)
    Void = raw_async(rpcs.VOID)
    ListTransactions = raw_async(rpcs.LIST_TRANSACTIONS)
    GetStreak = raw_async(rpcs.GET_STREAK)
    GetReferralCode = raw_async(rpcs.GET_REFERRAL_CODE)
    RedeemReferralCode = raw_async(rpcs.REDEEM_REFERRAL_CODE)


class AsyncBillingRpcs(AsyncServiceRpcs):
    """creditwallet.v1.BillingService (scope billing)."""

    RecordPurchase = raw_async(rpcs.RECORD_PURCHASE)
    SyncSubscription = raw_async(rpcs.SYNC_SUBSCRIPTION)
    RecordPaymentFailure = raw_async(rpcs.RECORD_PAYMENT_FAILURE)
    RecordRefund = raw_async(rpcs.RECORD_REFUND)
    Rollover = raw_async(rpcs.ROLLOVER)
    RecordAutoRechargePayment = raw_async(rpcs.RECORD_AUTO_RECHARGE_PAYMENT)


class AsyncAdminRpcs(AsyncServiceRpcs):
    """creditwallet.v1.AdminService (scope admin)."""

    Grant = raw_async(rpcs.GRANT)
    ReverseDebit = raw_async(rpcs.REVERSE_DEBIT)
    SetAgentPrice = raw_async(rpcs.SET_AGENT_PRICE)
    ListAgentPrices = raw_async(rpcs.LIST_AGENT_PRICES)
    GetStats = raw_async(rpcs.GET_STATS)
    VerifyLedger = raw_async(rpcs.VERIFY_LEDGER)
    SetBalanceAlert = raw_async(rpcs.SET_BALANCE_ALERT)
    SetAutoRecharge = raw_async(rpcs.SET_AUTO_RECHARGE)
    ListEvents = raw_async(rpcs.LIST_EVENTS)
    ReplayEvents = raw_async(rpcs.REPLAY_EVENTS)
    ListWebhookEndpoints = raw_async(rpcs.LIST_WEBHOOK_ENDPOINTS)
    GetRolloverProgress = raw_async(rpcs.GET_ROLLOVER_PROGRESS)


class SyncWalletRpcs(SyncServiceRpcs):
    """creditwallet.v1.WalletService (scope agent)."""

    EnsureAccount = raw_sync(rpcs.ENSURE_ACCOUNT)
    GetBalance = raw_sync(rpcs.GET_BALANCE)
    Debit = raw_sync(rpcs.DEBIT)
    BatchDebit = raw_sync(rpcs.BATCH_DEBIT)
    Authorize = raw_sync(rpcs.AUTHORIZE)
    Capture = raw_sync(rpcs.CAPTURE)
    Void = raw_sync(rpcs.VOID)
    ListTransactions = raw_sync(rpcs.LIST_TRANSACTIONS)
    GetStreak = raw_sync(rpcs.GET_STREAK)
    GetReferralCode = raw_sync(rpcs.GET_REFERRAL_CODE)
    RedeemReferralCode = raw_sync(rpcs.REDEEM_REFERRAL_CODE)


class SyncBillingRpcs(SyncServiceRpcs):
    """creditwallet.v1.BillingService (scope billing)."""

    RecordPurchase = raw_sync(rpcs.RECORD_PURCHASE)
    SyncSubscription = raw_sync(rpcs.SYNC_SUBSCRIPTION)
    RecordPaymentFailure = raw_sync(rpcs.RECORD_PAYMENT_FAILURE)
    RecordRefund = raw_sync(rpcs.RECORD_REFUND)
    Rollover = raw_sync(rpcs.ROLLOVER)
    RecordAutoRechargePayment = raw_sync(rpcs.RECORD_AUTO_RECHARGE_PAYMENT)


class SyncAdminRpcs(SyncServiceRpcs):
    """creditwallet.v1.AdminService (scope admin)."""

    Grant = raw_sync(rpcs.GRANT)
    ReverseDebit = raw_sync(rpcs.REVERSE_DEBIT)
    SetAgentPrice = raw_sync(rpcs.SET_AGENT_PRICE)
    ListAgentPrices = raw_sync(rpcs.LIST_AGENT_PRICES)
    GetStats = raw_sync(rpcs.GET_STATS)
    VerifyLedger = raw_sync(rpcs.VERIFY_LEDGER)
    SetBalanceAlert = raw_sync(rpcs.SET_BALANCE_ALERT)
    SetAutoRecharge = raw_sync(rpcs.SET_AUTO_RECHARGE)
    ListEvents = raw_sync(rpcs.LIST_EVENTS)
    ReplayEvents = raw_sync(rpcs.REPLAY_EVENTS)
    ListWebhookEndpoints = raw_sync(rpcs.LIST_WEBHOOK_ENDPOINTS)
    GetRolloverProgress = raw_sync(rpcs.GET_ROLLOVER_PROGRESS)
