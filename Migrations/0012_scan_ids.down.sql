DROP TRIGGER IF EXISTS scans_register_id ON scans;
DROP FUNCTION IF EXISTS scans_register_id();
DROP FUNCTION IF EXISTS scan_ids_backfill();
DROP TABLE IF EXISTS scan_ids;
