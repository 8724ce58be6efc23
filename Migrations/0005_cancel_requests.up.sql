-- A scan.cancel that reaches the dispatcher before its scan.create (a gateway publishing both
-- straight to the broker) leaves a request here; the create then finds it and the scan is born
-- canceled, with no Job: the cancel wins whatever the order.
CREATE TABLE scan_cancel_requests (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    scan_id uuid NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text,
    reason text,
    PRIMARY KEY (organization_id, scan_id)
);
ALTER TABLE scan_cancel_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE scan_cancel_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON scan_cancel_requests
    USING (organization_id = current_organization_id())
    WITH CHECK (organization_id = current_organization_id());
GRANT SELECT, INSERT, DELETE ON scan_cancel_requests TO cloudscan_app;
