-- The relay's lag as an operator reads it: rows not yet confirmed, and how long the oldest row
-- that is due (available_at passed) has waited. Rows held back on purpose (a retry's backoff) are
-- pending but not late.
CREATE FUNCTION outbox_lag(OUT pending bigint, OUT due bigint, OUT oldest_due_seconds double precision)
LANGUAGE sql SECURITY DEFINER STABLE
AS $$
    SELECT count(*), count(*) FILTER (WHERE available_at <= now()),
           coalesce(extract(epoch FROM now() - min(available_at) FILTER (WHERE available_at <= now())), 0)::float8
    FROM outbox WHERE sent_at IS NULL
$$;

DO $$
BEGIN
    ALTER FUNCTION outbox_lag() OWNER TO cloudscan_maintenance;
    EXECUTE format('ALTER FUNCTION outbox_lag() SET search_path = %I, pg_temp', current_schema());
    REVOKE ALL ON FUNCTION outbox_lag() FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION outbox_lag() TO cloudscan_app;
END
$$;
