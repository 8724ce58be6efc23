-- Scan ids are unique across organizations. `scans` is partitioned by month, so its primary key
-- is (id, created_at) and cannot say it; this registry can. Every scan inserted registers its id
-- here (a trigger running as cloudscan_maintenance; the services' role can neither read nor
-- write the table), so a gateway publishing a scan.create with another organization's scan id —
-- or any id already used — is refused with a unique violation on scan_ids_pkey, whatever
-- organization's row-level security the insert ran under. Ids stay registered after retention
-- deletes their scans (dropping a partition fires no row trigger): an id is used once.
CREATE TABLE scan_ids (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);
-- Row-level security with no policy, as on partitions: no role subject to it sees a row.
ALTER TABLE scan_ids ENABLE ROW LEVEL SECURITY;
ALTER TABLE scan_ids FORCE ROW LEVEL SECURITY;
REVOKE ALL ON scan_ids FROM PUBLIC;
GRANT SELECT, INSERT ON scan_ids TO cloudscan_maintenance;

CREATE FUNCTION scans_register_id() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO scan_ids (id, organization_id) VALUES (NEW.id, NEW.organization_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER scans_register_id AFTER INSERT ON scans FOR EACH ROW EXECUTE FUNCTION scans_register_id();

-- Scans made before this migration (read as the maintenance role: the migrating role is subject
-- to forced row-level security).
CREATE FUNCTION scan_ids_backfill() RETURNS bigint
LANGUAGE sql SECURITY DEFINER
AS $$
    WITH added AS (
        INSERT INTO scan_ids (id, organization_id)
        SELECT DISTINCT ON (id) id, organization_id FROM scans ORDER BY id, created_at
        ON CONFLICT (id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM added
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['scans_register_id()', 'scan_ids_backfill()'] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO cloudscan_maintenance', f);
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION scan_ids_backfill() TO CURRENT_USER;
SELECT scan_ids_backfill();
