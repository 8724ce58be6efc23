-- WatchScan: every scan_events row wakes the API processes watching that scan. The payload is
-- the scan id only; watchers read the events themselves, under their organization's RLS.
CREATE FUNCTION scan_events_notify() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('cloudscan_scan_events', NEW.scan_id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER scan_events_inserted AFTER INSERT ON scan_events
    FOR EACH ROW EXECUTE FUNCTION scan_events_notify();
