-- Webhook audit rows stay (NOT VALID keeps them); new ones are refused again.
ALTER TABLE admin_audit DROP CONSTRAINT admin_audit_entity_type_check;
ALTER TABLE admin_audit ADD CONSTRAINT admin_audit_entity_type_check
    CHECK (entity_type IN ('organization', 'project')) NOT VALID;
