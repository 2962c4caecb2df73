"""The Stripe webhook gateway: verifies provider events and forwards them as BillingService RPCs."""
