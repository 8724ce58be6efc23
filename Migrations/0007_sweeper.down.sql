DROP FUNCTION IF EXISTS sweeper_scans(uuid[]);
DROP FUNCTION IF EXISTS sweeper_active_scans();
REVOKE SELECT ON scans, scan_findings_batches FROM cloudscan_maintenance;
