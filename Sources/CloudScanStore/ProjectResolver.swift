import CloudScanCore
import CloudScanPostgres
import Foundation

/// The projects scans name, by id or by the gateway's external key, in the caller's transaction
/// (organization set): archived projects are not found. With `autoCreate` (the organization's
/// `auto_create_projects`), a key no project has yet gets a project on first use — named after
/// the key, with the defaults — and an audit row (`via` scan-create).
public enum ProjectResolver {
    public struct Resolved: Sendable, Hashable {
        public var id: UUID
        public var timeoutSeconds: Int
        public var defaultScanTypes: [ScanType]
    }

    public static func resolve(
        _ c: PostgresConnection, organizationID: UUID, ids: Set<UUID>, keys: Set<String>, autoCreate: Bool,
        actor: String
    ) async throws -> (byID: [UUID: Resolved], byKey: [String: Resolved]) {
        var byID: [UUID: Resolved] = [:]
        var byKey: [String: Resolved] = [:]
        if ids.isEmpty && keys.isEmpty { return (byID, byKey) }
        func read(_ rows: PostgresRows) throws {
            for row in rows {
                let resolved = Resolved(
                    id: try row.decode(UUID.self, at: 0), timeoutSeconds: try row.decode(Int.self, at: 2),
                    defaultScanTypes: try row.decode([String].self, at: 3).compactMap(ScanType.init(rawValue:)))
                byID[resolved.id] = resolved
                byKey[try row.decode(String.self, at: 1)] = resolved
            }
        }
        try read(
            try await c.query(
                """
                SELECT id, external_key, timeout_seconds, default_scan_types FROM projects
                WHERE archived_at IS NULL
                  AND (id = ANY(\(ids.map { $0.uuidString.lowercased() })::uuid[]) OR external_key = ANY(\(Array(keys))))
                """))
        let missing = keys.filter { byKey[$0] == nil }.filter(Self.usableKey)
        guard autoCreate, !missing.isEmpty else { return (byID, byKey) }
        // ON CONFLICT: an archived project keeps its key (and stays archived: still refused), and a
        // concurrent first use made it already (then it is read below).
        let created = try await c.query(
            """
            INSERT INTO projects (organization_id, name, external_key)
            SELECT \(organizationID), left(k, 200), k FROM unnest(\(Array(missing))::text[]) AS k
            ON CONFLICT (organization_id, external_key) DO NOTHING
            RETURNING id, external_key, timeout_seconds, default_scan_types, name, scanner_options, created_at
            """)
        for row in created {
            let id = try row.decode(UUID.self, at: 0)
            let key = try row.decode(String.self, at: 1)
            let after = JSONValue.object([
                "id": .string(id.uuidString.lowercased()),
                "organization_id": .string(organizationID.uuidString.lowercased()), "name": .string(key),
                "external_key": .string(key),
                "default_scan_types": .array(try row.decode([String].self, at: 3).map { .string($0) }),
                "timeout_seconds": .int(try row.decode(Int.self, at: 2)), "archived": .bool(false),
            ])
            try await c.execute(
                """
                INSERT INTO admin_audit (organization_id, actor, via, action, entity_type, entity_id, after)
                VALUES (\(organizationID), \(actor), 'scan-create', 'project.create', 'project', \(id),
                        \(PostgresJSONB(text: after.jsonText)))
                """)
        }
        try read(
            try await c.query(
                """
                SELECT id, external_key, timeout_seconds, default_scan_types FROM projects
                WHERE archived_at IS NULL AND external_key = ANY(\(Array(missing)))
                """))
        return (byID, byKey)
    }

    /// A key a project could be made for (the projects table's check, no control characters).
    static func usableKey(_ key: String) -> Bool {
        !key.isEmpty && key.count <= 200 && !key.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f }
    }
}
