-- Admission control reads how many scans an organization has queued on every create, and the
-- dispatcher how many hold a runner (dispatched or running) on every dispatch. Counting them cost
-- O(backlog) each time (the count's time grew linearly through a benchmark run); these counters
-- make both checks O(1). Row triggers keep it exact in the same transaction as the change.
-- They are constraint triggers, deferred to COMMIT, so a counter row is locked only while a
-- transaction commits, never across a client's round trips. The counter has its own table: on the
-- organizations row itself (which every scans/events/outbox insert key-share locks through its
-- foreign key) 64 concurrent single-scan transactions fell from ~1000 to ~180 TPS in MultiXact and
-- lock-manager waits. It is sharded by the writing session (32 rows an organization at most; the
-- count is their sum): one row fell to ~450 TPS, every commit waiting for the previous one's flush.
-- They run as cloudscan_maintenance (SECURITY DEFINER), so every writer — a service under its
-- organization's RLS or a cross-organization maintenance function — keeps the counter right.
CREATE TABLE organization_queue_counts (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    shard smallint NOT NULL CHECK (shard BETWEEN 0 AND 31),
    queued integer NOT NULL DEFAULT 0,  -- one shard may go negative; the sum is exact
    active integer NOT NULL DEFAULT 0,  -- dispatched or running
    PRIMARY KEY (organization_id, shard)
);
ALTER TABLE organization_queue_counts ENABLE ROW LEVEL SECURITY;
ALTER TABLE organization_queue_counts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON organization_queue_counts USING (organization_id = current_organization_id());
-- Services read their organization's count; only the triggers below (as cloudscan_maintenance) write.
GRANT SELECT ON organization_queue_counts TO cloudscan_app;

CREATE FUNCTION scans_count_queued() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    queued_delta integer := 0;
    active_delta integer := 0;
    org uuid;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        org := OLD.organization_id;
        IF OLD.status = 'queued' THEN queued_delta := queued_delta - 1; END IF;
        IF OLD.status IN ('dispatched', 'running') THEN active_delta := active_delta - 1; END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        org := NEW.organization_id;
        IF NEW.status = 'queued' THEN queued_delta := queued_delta + 1; END IF;
        IF NEW.status IN ('dispatched', 'running') THEN active_delta := active_delta + 1; END IF;
    END IF;
    IF queued_delta <> 0 OR active_delta <> 0 THEN
        -- (Not for an organization this transaction deleted: its scans go by cascade.)
        INSERT INTO organization_queue_counts AS c (organization_id, shard, queued, active)
        SELECT org, pg_backend_pid() % 32, queued_delta, active_delta
        WHERE EXISTS (SELECT 1 FROM organizations WHERE id = org)
        ON CONFLICT (organization_id, shard)
        DO UPDATE SET queued = c.queued + excluded.queued, active = c.active + excluded.active;
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER scans_queued_insert AFTER INSERT ON scans
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status IN ('queued', 'dispatched', 'running'))
    EXECUTE FUNCTION scans_count_queued();
CREATE CONSTRAINT TRIGGER scans_queued_update AFTER UPDATE OF status ON scans
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.status = 'queued') IS DISTINCT FROM (NEW.status = 'queued')
          OR (OLD.status IN ('dispatched', 'running')) IS DISTINCT FROM (NEW.status IN ('dispatched', 'running')))
    EXECUTE FUNCTION scans_count_queued();
CREATE CONSTRAINT TRIGGER scans_queued_delete AFTER DELETE ON scans
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status IN ('queued', 'dispatched', 'running'))
    EXECUTE FUNCTION scans_count_queued();

-- Sets every organization's counter from its rows (the migration's backfill; also an operator's
-- repair). Returns how many counters changed.
CREATE FUNCTION organization_queued_recount() RETURNS integer
LANGUAGE sql SECURITY DEFINER
AS $$
    WITH actual AS (
        SELECT o.id,
               (SELECT count(*) FROM scans s WHERE s.organization_id = o.id AND s.status = 'queued')::integer AS queued,
               (SELECT count(*) FROM scans s WHERE s.organization_id = o.id
                                              AND s.status IN ('dispatched', 'running'))::integer AS active,
               (SELECT sum(q.queued) FROM organization_queue_counts q WHERE q.organization_id = o.id) AS counted_queued,
               (SELECT sum(q.active) FROM organization_queue_counts q WHERE q.organization_id = o.id) AS counted_active
        FROM organizations o
    ), wrong AS (
        SELECT id, queued, active FROM actual
        WHERE coalesce(counted_queued, 0) <> queued OR coalesce(counted_active, 0) <> active
    ), cleared AS (
        DELETE FROM organization_queue_counts q USING wrong w WHERE q.organization_id = w.id AND q.shard <> 0
    ), c AS (
        INSERT INTO organization_queue_counts AS c (organization_id, shard, queued, active)
        SELECT id, 0, queued, active FROM wrong
        ON CONFLICT (organization_id, shard) DO UPDATE SET queued = excluded.queued, active = excluded.active
        RETURNING 1
    )
    SELECT count(*)::integer FROM c
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON organization_queue_counts TO cloudscan_maintenance;
GRANT SELECT ON organizations, scans TO cloudscan_maintenance;
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['scans_count_queued()', 'organization_queued_recount()'] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO cloudscan_maintenance', f);
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
-- The backfill runs as the function's owner (the migrating role is subject to forced RLS).
GRANT EXECUTE ON FUNCTION organization_queued_recount() TO CURRENT_USER;
SELECT organization_queued_recount();
