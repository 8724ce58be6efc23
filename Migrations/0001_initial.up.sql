-- cloudscan initial schema. Applied by `cloudscan migrate up` in one transaction, in the
-- session's first search_path schema. Roles (created by scripts/sql/roles.sql):
--   the migrating role owns every object; cloudscan_app is what the services use: no BYPASSRLS,
--   not an owner, DML only, so the row-level security below always applies to it.

-- The organization a transaction acts for: `SELECT set_config('cloudscan.organization_id', $1, true)`.
-- Unset or empty means none, and every tenant policy then matches nothing.
CREATE FUNCTION current_organization_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULLIF(current_setting('cloudscan.organization_id', true), '')::uuid $$;

CREATE TABLE organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    retention_days integer NOT NULL DEFAULT 90 CHECK (retention_days BETWEEN 1 AND 3650),
    concurrency_quota integer NOT NULL DEFAULT 10 CHECK (concurrency_quota >= 0),
    queued_scan_cap integer NOT NULL DEFAULT 1000 CHECK (queued_scan_cap >= 0),
    enabled_scan_types text[] NOT NULL DEFAULT '{sast,secrets,iac,sca}'
        CHECK (enabled_scan_types <@ '{sast,secrets,iac,sca}'::text[]),
    disabled_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    external_key text NOT NULL CHECK (length(external_key) BETWEEN 1 AND 200),
    default_scan_types text[] NOT NULL DEFAULT '{sast,secrets}'
        CHECK (default_scan_types <@ '{sast,secrets,iac,sca}'::text[]),
    scanner_options jsonb NOT NULL DEFAULT '{}',
    timeout_seconds integer NOT NULL DEFAULT 1800 CHECK (timeout_seconds BETWEEN 30 AND 86400),
    archived_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, external_key),
    UNIQUE (organization_id, id)
);

-- Scans, partitioned by month of creation. The primary key includes the partition key.
CREATE TABLE scans (
    id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id uuid NOT NULL,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'dispatched', 'running', 'retrying', 'completed', 'failed', 'canceled')),
    version bigint NOT NULL DEFAULT 0,
    scan_types text[] NOT NULL CHECK (cardinality(scan_types) > 0 AND scan_types <@ '{sast,secrets,iac,sca}'::text[]),
    artifact_ref text NOT NULL CHECK (length(artifact_ref) BETWEEN 1 AND 2048),
    artifact_sha256 text CHECK (artifact_sha256 ~ '^[0-9a-f]{64}$'),
    attempt integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    timeout_seconds integer NOT NULL DEFAULT 1800 CHECK (timeout_seconds BETWEEN 30 AND 86400),
    job_name text,
    failure_reason text,
    failure_message text,
    labels jsonb NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}',
    traceparent text,
    findings_critical integer NOT NULL DEFAULT 0,
    findings_high integer NOT NULL DEFAULT 0,
    findings_medium integer NOT NULL DEFAULT 0,
    findings_low integer NOT NULL DEFAULT 0,
    findings_info integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    dispatched_at timestamptz,
    started_at timestamptz,
    heartbeat_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at),
    FOREIGN KEY (organization_id, project_id) REFERENCES projects (organization_id, id) ON DELETE CASCADE
) PARTITION BY RANGE (created_at);

CREATE INDEX scans_org_created_idx ON scans (organization_id, created_at DESC, id);
CREATE INDEX scans_active_idx ON scans (status, updated_at)
    WHERE status IN ('queued', 'dispatched', 'running', 'retrying');

-- Idempotency-Key of CreateScan: outside the partitioned table, so it is unique across months.
CREATE TABLE scan_idempotency_keys (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash text NOT NULL,
    scan_id uuid NOT NULL,
    scan_created_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, idempotency_key)
);

-- One readable timeline per scan: every transition, who made it, why, and from which message.
CREATE TABLE scan_events (
    id bigint GENERATED ALWAYS AS IDENTITY,
    organization_id uuid NOT NULL,
    scan_id uuid NOT NULL,
    scan_created_at timestamptz NOT NULL,
    from_status text,
    to_status text NOT NULL,
    actor text NOT NULL,
    reason text,
    message_id text,
    details jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, scan_created_at),
    FOREIGN KEY (scan_id, scan_created_at) REFERENCES scans (id, created_at) ON DELETE CASCADE
) PARTITION BY RANGE (scan_created_at);

CREATE INDEX scan_events_scan_idx ON scan_events (scan_id, scan_created_at, id);

-- Findings, partitioned by the month of their scan, so a month's scans and findings go together.
CREATE TABLE findings (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    scan_id uuid NOT NULL,
    scan_created_at timestamptz NOT NULL,
    scanner text NOT NULL,
    rule_id text NOT NULL,
    severity text NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low', 'info')),
    title text NOT NULL,
    message text NOT NULL DEFAULT '',
    path text NOT NULL DEFAULT '',
    line integer,
    "column" integer,
    cwe text[] NOT NULL DEFAULT '{}',
    fingerprint text NOT NULL,
    raw jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, scan_created_at),
    UNIQUE (scan_id, scan_created_at, fingerprint),
    FOREIGN KEY (scan_id, scan_created_at) REFERENCES scans (id, created_at) ON DELETE CASCADE
) PARTITION BY RANGE (scan_created_at);

-- Transactional outbox: rows written with the change they announce, published by the relay.
CREATE TABLE outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    message_id uuid NOT NULL UNIQUE,
    exchange text NOT NULL,
    routing_key text NOT NULL,
    message_type text NOT NULL,
    correlation_id text,
    headers jsonb NOT NULL DEFAULT '{}',
    payload jsonb NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    available_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (available_at, id) WHERE sent_at IS NULL;

-- Message ids a consumer has applied, where its effect is not idempotent by itself.
CREATE TABLE processed_messages (
    consumer text NOT NULL,
    message_id text NOT NULL,
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE webhook_subscriptions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2048),
    secret text NOT NULL,
    events text[] NOT NULL DEFAULT '{scan.completed,scan.failed}'
        CHECK (cardinality(events) > 0 AND events <@ '{scan.completed,scan.failed}'::text[]),
    minimum_severity text CHECK (minimum_severity IN ('critical', 'high', 'medium', 'low', 'info')),
    payload_format text NOT NULL DEFAULT 'json' CHECK (payload_format IN ('json', 'slack')),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id)
);

CREATE TABLE webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id uuid NOT NULL,
    subscription_id uuid NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    scan_id uuid,
    attempt integer NOT NULL DEFAULT 1,
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'retrying', 'failed')),
    response_code integer,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    UNIQUE (subscription_id, event_id, attempt),
    FOREIGN KEY (organization_id, subscription_id)
        REFERENCES webhook_subscriptions (organization_id, id) ON DELETE CASCADE
);

-- Monthly partitions named <table>_pYYYYMM. Creates `months` months starting at `from_month`'s
-- month for every partitioned table above; returns how many partitions it created. New
-- partitions get row-level security with no policy, so they are unreadable except through
-- their parent (whose policies apply), and cloudscan_app gets no grant on them.
CREATE FUNCTION ensure_month_partitions(from_month timestamptz, months integer) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    parent text;
    month_start date;
    partition_name text;
    created integer := 0;
BEGIN
    FOREACH parent IN ARRAY ARRAY['scans', 'scan_events', 'findings'] LOOP
        FOR i IN 0 .. months - 1 LOOP
            month_start := (date_trunc('month', from_month AT TIME ZONE 'UTC') + make_interval(months => i))::date;
            partition_name := parent || '_p' || to_char(month_start, 'YYYYMM');
            IF to_regclass(quote_ident(current_schema()) || '.' || quote_ident(partition_name)) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                    current_schema(), partition_name, current_schema(), parent,
                    (month_start::timestamp AT TIME ZONE 'UTC'),
                    ((month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
                EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', current_schema(), partition_name);
                EXECUTE format('ALTER TABLE %I.%I FORCE ROW LEVEL SECURITY', current_schema(), partition_name);
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

SELECT ensure_month_partitions(now() - interval '1 month', 5);

-- Row-level security: enabled and forced on every tenant table, one policy keyed on the
-- transaction's organization. Inserts and updates for another organization fail the check.
ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE organizations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON organizations
    USING (id = current_organization_id()) WITH CHECK (id = current_organization_id());

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['projects', 'scans', 'scan_idempotency_keys', 'scan_events', 'findings', 'outbox',
                             'processed_messages', 'webhook_subscriptions', 'webhook_deliveries'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (organization_id = current_organization_id()) '
            'WITH CHECK (organization_id = current_organization_id())', t);
    END LOOP;
END
$$;

-- What the services may do. No DDL, no TRUNCATE, nothing on partitions directly.
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO cloudscan_app', current_schema());
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON organizations, projects, scans, scan_idempotency_keys, scan_events,
    findings, outbox, processed_messages, webhook_subscriptions, webhook_deliveries TO cloudscan_app;
GRANT EXECUTE ON FUNCTION current_organization_id() TO cloudscan_app;
