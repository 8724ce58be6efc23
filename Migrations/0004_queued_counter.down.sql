DROP TRIGGER IF EXISTS scans_queued_insert ON scans;
DROP TRIGGER IF EXISTS scans_queued_update ON scans;
DROP TRIGGER IF EXISTS scans_queued_delete ON scans;
DROP FUNCTION IF EXISTS scans_count_queued();
DROP FUNCTION IF EXISTS organization_queued_recount();
DROP TABLE IF EXISTS organization_queue_counts;
REVOKE SELECT ON organizations, scans FROM cloudscan_maintenance;
