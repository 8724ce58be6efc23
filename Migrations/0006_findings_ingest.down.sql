ALTER TABLE scans DROP COLUMN IF EXISTS completion_report;
ALTER TABLE scans DROP COLUMN IF EXISTS expected_batches;
DROP TABLE IF EXISTS scan_findings_batches;
