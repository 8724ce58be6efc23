-- Reverts 0001_initial: drops every object it created (partitions go with their parents).
DROP TABLE IF EXISTS webhook_deliveries, webhook_subscriptions, processed_messages, outbox, findings, scan_events,
    scan_idempotency_keys, scans, projects, organizations CASCADE;
DROP FUNCTION IF EXISTS ensure_month_partitions(timestamptz, integer);
DROP FUNCTION IF EXISTS current_organization_id();
DO $$
BEGIN
    EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM cloudscan_app', current_schema());
END
$$;
