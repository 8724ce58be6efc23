-- Webhook subscriptions are administered (organization admins only) and audited like projects;
-- their signing secrets are sealed by the services (AES-256-GCM, `v1:<key id>:…`) before they
-- reach this table. Rows written before are sealed by `cloudscan admin webhook-secrets reseal`.

ALTER TABLE admin_audit DROP CONSTRAINT admin_audit_entity_type_check;
ALTER TABLE admin_audit ADD CONSTRAINT admin_audit_entity_type_check
    CHECK (entity_type IN ('organization', 'project', 'webhook_subscription'));
