-- The sweeper reconciles runners (Kubernetes Jobs, local processes) with scans across
-- organizations. It reads scans only through these SECURITY DEFINER functions, owned by
-- cloudscan_maintenance; every change it makes is a conditional move under the scan's own
-- organization, as the other roles make them.

-- Scans that hold or await a runner, with what reconciling them needs. Ages are the database's
-- (one clock for every role).
CREATE FUNCTION sweeper_active_scans()
RETURNS TABLE (
    id uuid, created_at timestamptz, organization_id uuid, project_id uuid, status text, attempt integer,
    max_attempts integer, scan_types text[], dispatched_age double precision, heartbeat_age double precision,
    reported boolean, expected_batches integer, batches_in integer
)
LANGUAGE sql SECURITY DEFINER STABLE
AS $$
    SELECT s.id, s.created_at, s.organization_id, s.project_id, s.status, s.attempt, s.max_attempts, s.scan_types,
           extract(epoch FROM now() - s.dispatched_at)::float8,
           extract(epoch FROM now() - coalesce(s.heartbeat_at, s.started_at, s.dispatched_at))::float8,
           s.completion_report IS NOT NULL, s.expected_batches,
           CASE WHEN s.status = 'running' THEN
               (SELECT count(*)::integer FROM scan_findings_batches b
                WHERE b.scan_id = s.id AND b.scan_created_at = s.created_at AND b.attempt = s.attempt)
           END
    FROM scans s
    WHERE s.status IN ('dispatched', 'running')
$$;

-- The state of the given scans (the runners' scans), whatever their organization.
CREATE FUNCTION sweeper_scans(ids uuid[])
RETURNS TABLE (id uuid, organization_id uuid, status text, attempt integer, finished_age double precision)
LANGUAGE sql SECURITY DEFINER STABLE
AS $$
    SELECT s.id, s.organization_id, s.status, s.attempt, extract(epoch FROM now() - s.finished_at)::float8
    FROM scans s
    WHERE s.id = ANY (ids)
$$;

GRANT SELECT ON scans, scan_findings_batches TO cloudscan_maintenance;
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['sweeper_active_scans()', 'sweeper_scans(uuid[])'] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO cloudscan_maintenance', f);
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO cloudscan_app', f);
    END LOOP;
END
$$;
