-- Retention (`cloudscan cleaner`). The services' role reaches across organizations only through
-- these SECURITY DEFINER functions:
--   * row work as cloudscan_maintenance (BYPASSRLS): each organization's cutoff, a bounded batch
--     of an organization's expired scans, deleting that batch (findings first, counted), a
--     month's artifacts and the rows outside the partitioned tables that point into it, and sent
--     outbox rows past a week;
--   * DDL as the schema's owner (only an owner may create, detach and drop partitions): the
--     coming months' partitions, and dropping a whole expired month.

CREATE FUNCTION retention_policies()
RETURNS TABLE (organization_id uuid, retention_days integer, cutoff timestamptz)
LANGUAGE sql SECURITY DEFINER STABLE
AS $$
    SELECT o.id, o.retention_days, now() - make_interval(days => o.retention_days) FROM organizations o
$$;

-- An organization's oldest expired scans (created before the cutoff, finished) after the keyset
-- (after_created, after_id): at most max_scans, and about max_findings findings (always the
-- first scan, however many it has).
CREATE FUNCTION retention_expired_scans(
    org uuid, cutoff timestamptz, after_created timestamptz, after_id uuid, max_scans integer, max_findings bigint
)
RETURNS TABLE (id uuid, created_at timestamptz, artifact_ref text, findings bigint)
LANGUAGE sql SECURITY DEFINER STABLE
AS $$
    SELECT b.id, b.created_at, b.artifact_ref, b.findings
    FROM (
        SELECT s.id, s.created_at, s.artifact_ref,
               (s.findings_critical + s.findings_high + s.findings_medium + s.findings_low + s.findings_info)::bigint
                   AS findings,
               sum(s.findings_critical + s.findings_high + s.findings_medium + s.findings_low + s.findings_info)
                   OVER (ORDER BY s.created_at, s.id) AS running
        FROM scans s
        WHERE s.organization_id = org AND s.created_at < cutoff AND s.status IN ('completed', 'failed', 'canceled')
          AND (s.created_at, s.id) > (after_created, after_id)
        ORDER BY s.created_at, s.id
        LIMIT max_scans
    ) b
    WHERE b.running - b.findings < max_findings OR b.running = b.findings
$$;

-- Deletes those of the given scans that are still the organization's, expired and finished:
-- their findings first (counted), their idempotency keys, then the scans (events and batch
-- records go by cascade). One call, one bounded transaction.
CREATE FUNCTION retention_delete_scans(org uuid, cutoff timestamptz, ids uuid[], created timestamptz[])
RETURNS TABLE (scans integer, findings bigint)
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    deleted_findings bigint;
    deleted_scans integer;
BEGIN
    DELETE FROM findings f USING unnest(ids, created) AS t(id, created_at)
    WHERE f.scan_id = t.id AND f.scan_created_at = t.created_at AND f.organization_id = org
      AND f.scan_created_at < cutoff;
    GET DIAGNOSTICS deleted_findings = ROW_COUNT;
    DELETE FROM scan_idempotency_keys k USING unnest(ids, created) AS t(id, created_at)
    WHERE k.organization_id = org AND k.scan_id = t.id AND k.scan_created_at = t.created_at;
    DELETE FROM scans s USING unnest(ids, created) AS t(id, created_at)
    WHERE s.id = t.id AND s.created_at = t.created_at AND s.organization_id = org AND s.created_at < cutoff
      AND s.status IN ('completed', 'failed', 'canceled');
    GET DIAGNOSTICS deleted_scans = ROW_COUNT;
    RETURN QUERY SELECT deleted_scans, deleted_findings;
END
$$;

-- The scans' partitioned months that end on or before `before`, oldest first, with their rows.
CREATE FUNCTION retention_months_before(before timestamptz)
RETURNS TABLE (month date, scans bigint, findings bigint)
LANGUAGE plpgsql SECURITY DEFINER STABLE
AS $$
DECLARE
    partition_name text;
    month_start date;
BEGIN
    FOR partition_name IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'scans'::regclass ORDER BY c.relname
    LOOP
        CONTINUE WHEN partition_name !~ '_p[0-9]{6}$';
        month_start := to_date(right(partition_name, 6), 'YYYYMM');
        CONTINUE WHEN (month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC' > before;
        month := month_start;
        -- Through the parents (pruned to the month): the partitions themselves grant nothing.
        SELECT count(*) INTO scans FROM scans s
        WHERE s.created_at >= (month_start::timestamp AT TIME ZONE 'UTC')
          AND s.created_at < ((month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        SELECT count(*) INTO findings FROM findings f
        WHERE f.scan_created_at >= (month_start::timestamp AT TIME ZONE 'UTC')
          AND f.scan_created_at < ((month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        RETURN NEXT;
    END LOOP;
END
$$;

-- The month's scans' artifact references (what the storage service must delete first).
CREATE FUNCTION retention_month_artifacts(month date)
RETURNS TABLE (organization_id uuid, artifact_ref text)
LANGUAGE sql SECURITY DEFINER STABLE
AS $$
    SELECT DISTINCT s.organization_id, s.artifact_ref FROM scans s
    WHERE s.created_at >= (month::timestamp AT TIME ZONE 'UTC')
      AND s.created_at < ((month + interval '1 month')::timestamp AT TIME ZONE 'UTC')
$$;

-- Rows outside the partitioned tables that point into the month (they would block the detach).
CREATE FUNCTION retention_clear_month(month date) RETURNS void
LANGUAGE sql SECURITY DEFINER
AS $$
    DELETE FROM scan_findings_batches
    WHERE scan_created_at >= (month::timestamp AT TIME ZONE 'UTC')
      AND scan_created_at < ((month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    DELETE FROM scan_idempotency_keys
    WHERE scan_created_at >= (month::timestamp AT TIME ZONE 'UTC')
      AND scan_created_at < ((month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
$$;

-- Sent outbox rows older than `keep` (the relay's history).
CREATE FUNCTION retention_prune_outbox(keep interval) RETURNS integer
LANGUAGE sql SECURITY DEFINER
AS $$
    WITH gone AS (DELETE FROM outbox WHERE sent_at < now() - keep RETURNING 1) SELECT count(*)::integer FROM gone
$$;

GRANT SELECT ON organizations, scans TO cloudscan_maintenance;
GRANT SELECT, DELETE ON findings, scans, scan_idempotency_keys, scan_events, scan_findings_batches, outbox
    TO cloudscan_maintenance;

-- DDL, as the owner: the coming months, and dropping a whole expired month (its findings and
-- events partitions, then its scans partition). A short lock_timeout: behind a long transaction
-- it gives up (the next run tries again) rather than queue everyone behind its lock.
CREATE FUNCTION retention_ensure_partitions(months_ahead integer) RETURNS integer
LANGUAGE sql SECURITY DEFINER
AS $$ SELECT ensure_month_partitions(now() - interval '1 month', months_ahead + 2) $$;

CREATE FUNCTION retention_drop_month(month date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    suffix text := to_char(month, 'YYYYMM');
    parent text;
    dropped integer := 0;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    PERFORM retention_clear_month(month);
    FOREACH parent IN ARRAY ARRAY['findings', 'scan_events', 'scans'] LOOP
        IF to_regclass(quote_ident(parent || '_p' || suffix)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', parent, parent || '_p' || suffix);
            EXECUTE format('DROP TABLE %I', parent || '_p' || suffix);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['retention_policies()', 'retention_expired_scans(uuid, timestamptz, timestamptz, uuid, integer, bigint)',
                             'retention_delete_scans(uuid, timestamptz, uuid[], timestamptz[])',
                             'retention_months_before(timestamptz)', 'retention_month_artifacts(date)',
                             'retention_clear_month(date)', 'retention_prune_outbox(interval)'] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO cloudscan_maintenance', f);
    END LOOP;
    FOREACH f IN ARRAY ARRAY['retention_policies()', 'retention_expired_scans(uuid, timestamptz, timestamptz, uuid, integer, bigint)',
                             'retention_delete_scans(uuid, timestamptz, uuid[], timestamptz[])',
                             'retention_months_before(timestamptz)', 'retention_month_artifacts(date)',
                             'retention_clear_month(date)', 'retention_prune_outbox(interval)',
                             'retention_ensure_partitions(integer)', 'retention_drop_month(date)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO cloudscan_app', f);
    END LOOP;
    -- The owner's drop calls the maintenance function that clears the month's references.
    EXECUTE format('GRANT EXECUTE ON FUNCTION retention_clear_month(date) TO %I', current_user);
END
$$;
