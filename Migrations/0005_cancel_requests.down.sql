DROP TABLE IF EXISTS scan_cancel_requests;
