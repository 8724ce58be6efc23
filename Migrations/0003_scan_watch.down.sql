DROP TRIGGER IF EXISTS scan_events_inserted ON scan_events;
DROP FUNCTION IF EXISTS scan_events_notify();
