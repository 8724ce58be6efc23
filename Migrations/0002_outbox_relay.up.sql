-- The outbox relay works across organizations, so it reads and marks outbox rows only through
-- these SECURITY DEFINER functions, owned by cloudscan_maintenance (BYPASSRLS, no login). The
-- services' role can call them; it still cannot read another organization's rows any other way.

-- Pending rows, oldest first, locked for the caller's transaction (SKIP LOCKED: relays in
-- parallel take different rows).
CREATE FUNCTION outbox_claim(batch_size integer)
RETURNS TABLE (
    id bigint, organization_id uuid, message_id uuid, exchange text, routing_key text, message_type text,
    correlation_id text, headers jsonb, payload jsonb, created_at timestamptz
)
LANGUAGE sql SECURITY DEFINER
AS $$
    SELECT o.id, o.organization_id, o.message_id, o.exchange, o.routing_key, o.message_type, o.correlation_id,
           o.headers, o.payload, o.created_at
    FROM outbox o
    WHERE o.sent_at IS NULL AND o.available_at <= now()
    ORDER BY o.id
    LIMIT batch_size
    FOR UPDATE SKIP LOCKED
$$;

-- Marks rows published (confirmed by the broker). Returns how many changed.
CREATE FUNCTION outbox_mark_sent(ids bigint[]) RETURNS integer
LANGUAGE sql SECURITY DEFINER
AS $$
    WITH done AS (
        UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL
        WHERE id = ANY (ids) AND sent_at IS NULL
        RETURNING 1
    )
    SELECT count(*)::integer FROM done
$$;

-- Records a failed attempt and when to try again.
CREATE FUNCTION outbox_mark_failed(ids bigint[], error text, retry_in interval) RETURNS integer
LANGUAGE sql SECURITY DEFINER
AS $$
    WITH failed AS (
        UPDATE outbox SET attempts = attempts + 1, last_error = left(error, 1000), available_at = now() + retry_in
        WHERE id = ANY (ids) AND sent_at IS NULL
        RETURNING 1
    )
    SELECT count(*)::integer FROM failed
$$;

-- Pending rows and the age of the oldest (the relay's lag), across organizations.
CREATE FUNCTION outbox_backlog(OUT pending bigint, OUT oldest_age interval)
LANGUAGE sql SECURITY DEFINER STABLE
AS $$
    SELECT count(*), now() - min(created_at) FROM outbox WHERE sent_at IS NULL
$$;

-- Wake relays when rows arrive (once per statement; the payload is empty on purpose).
CREATE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('cloudscan_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_inserted AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

DO $$
DECLARE
    f text;
BEGIN
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO cloudscan_maintenance', current_schema());
    FOREACH f IN ARRAY ARRAY['outbox_claim(integer)', 'outbox_mark_sent(bigint[])',
                             'outbox_mark_failed(bigint[], text, interval)', 'outbox_backlog()'] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO cloudscan_maintenance', f);
        -- A definer function resolves names in its own schema only, never in the caller's path.
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO cloudscan_app', f);
    END LOOP;
END
$$;
GRANT SELECT, UPDATE ON outbox TO cloudscan_maintenance;
