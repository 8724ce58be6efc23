DROP TRIGGER IF EXISTS outbox_inserted ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
DROP FUNCTION IF EXISTS outbox_backlog();
DROP FUNCTION IF EXISTS outbox_mark_failed(bigint[], text, interval);
DROP FUNCTION IF EXISTS outbox_mark_sent(bigint[]);
DROP FUNCTION IF EXISTS outbox_claim(integer);
REVOKE SELECT, UPDATE ON outbox FROM cloudscan_maintenance;
DO $$
BEGIN
    EXECUTE format('REVOKE USAGE, CREATE ON SCHEMA %I FROM cloudscan_maintenance', current_schema());
END
$$;
