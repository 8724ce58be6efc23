DROP FUNCTION IF EXISTS retention_drop_month(date);
DROP FUNCTION IF EXISTS retention_ensure_partitions(integer);
DROP FUNCTION IF EXISTS retention_prune_outbox(interval);
DROP FUNCTION IF EXISTS retention_clear_month(date);
DROP FUNCTION IF EXISTS retention_month_artifacts(date);
DROP FUNCTION IF EXISTS retention_months_before(timestamptz);
DROP FUNCTION IF EXISTS retention_delete_scans(uuid, timestamptz, uuid[], timestamptz[]);
DROP FUNCTION IF EXISTS retention_expired_scans(uuid, timestamptz, timestamptz, uuid, integer, bigint);
DROP FUNCTION IF EXISTS retention_policies();
-- SELECT on scans and scan_findings_batches stays (0007's sweeper functions use it).
REVOKE DELETE ON findings, scans, scan_idempotency_keys, scan_events, scan_findings_batches, outbox
    FROM cloudscan_maintenance;
REVOKE SELECT ON organizations, findings, scan_idempotency_keys, scan_events, outbox FROM cloudscan_maintenance;
