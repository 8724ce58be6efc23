-- Findings ingestion and the runner's completion.
--
-- The findings writer records each findings batch it took (or refused, for a runner whose token
-- checked out) in scan_findings_batches, in the transaction that writes its rows. A runner's
-- completed report says how many batches it published; the status writer stores the report on
-- the scan (completion_report, expected_batches) and the scan becomes completed once every batch
-- of that attempt is recorded — whichever of the two writers comes last makes the move, under
-- the scan's row lock. So "completed" means every finding is in.
CREATE TABLE scan_findings_batches (
    organization_id uuid NOT NULL,
    scan_id uuid NOT NULL,
    scan_created_at timestamptz NOT NULL,
    attempt integer NOT NULL,
    batch_index integer NOT NULL CHECK (batch_index >= 0),
    findings integer NOT NULL DEFAULT 0,
    inserted integer NOT NULL DEFAULT 0,
    refused_reason text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scan_id, attempt, batch_index),
    FOREIGN KEY (scan_id, scan_created_at) REFERENCES scans (id, created_at) ON DELETE CASCADE
);
CREATE INDEX scan_findings_batches_scan_idx ON scan_findings_batches (scan_id, scan_created_at);
ALTER TABLE scan_findings_batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE scan_findings_batches FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON scan_findings_batches
    USING (organization_id = current_organization_id())
    WITH CHECK (organization_id = current_organization_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON scan_findings_batches TO cloudscan_app;

ALTER TABLE scans ADD COLUMN expected_batches integer CHECK (expected_batches >= 0);
ALTER TABLE scans ADD COLUMN completion_report jsonb;
