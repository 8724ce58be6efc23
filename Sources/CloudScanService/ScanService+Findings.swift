import CloudScanCore
import CloudScanPostgres
import Foundation

extension ScanService {
    /// Filters for ``listFindings(organizationID:scanID:filter:pageSize:cursor:)``.
    public struct FindingsFilter: Sendable, Hashable {
        /// Only these severities (all when empty).
        public var severities: [Severity]
        public var scanner: String?
        /// Only paths starting with this.
        public var pathPrefix: String?

        public init(severities: [Severity] = [], scanner: String? = nil, pathPrefix: String? = nil) {
            self.severities = severities
            self.scanner = scanner
            self.pathPrefix = pathPrefix
        }
    }

    /// A page of a scan's findings (stable order) and the next page's cursor. A scan of another
    /// organization is not found.
    public func listFindings(
        organizationID: UUID, scanID: UUID, filter: FindingsFilter = .init(), pageSize: Int = 100, cursor: String? = nil
    ) async throws -> (findings: [Finding], nextCursor: String?) {
        guard (1...1000).contains(pageSize) else {
            throw ScanServiceError.invalidArgument(field: "page_size", "between 1 and 1000")
        }
        var after: UUID?
        if let cursor, !cursor.isEmpty {
            guard let data = Data(base64Encoded: cursor), let text = String(data: data, encoding: .utf8),
                let id = UUID(uuidString: text)
            else { throw ScanServiceError.invalidArgument(field: "cursor", "not a cursor this service issued") }
            after = id
        }
        let severities = filter.severities.map(\.rawValue)
        let prefix = filter.pathPrefix.map { Self.likeEscaped($0) + "%" }
        return try await client.withTransaction(organizationID: organizationID) { c in
            let scan = try await c.query("SELECT created_at FROM scans WHERE id = \(scanID)")
            guard let createdAt = try scan.first?.decode(Date.self, at: 0) else {
                throw ScanServiceError(code: .notFound, message: "no scan \(scanID)")
            }
            let rows = try await c.query(
                """
                SELECT id, scanner, rule_id, severity, title, message, path, line, "column", cwe, fingerprint
                FROM findings
                WHERE scan_id = \(scanID) AND scan_created_at = \(createdAt)
                  AND (cardinality(\(severities)::text[]) = 0 OR severity = ANY(\(severities)::text[]))
                  AND (\(filter.scanner)::text IS NULL OR scanner = \(filter.scanner))
                  AND (\(prefix)::text IS NULL OR path LIKE \(prefix))
                  AND (\(after)::uuid IS NULL OR id > \(after))
                ORDER BY id
                LIMIT \(pageSize + 1)
                """)
            var findings = try rows.map { row in
                Finding(
                    id: try row.decode(UUID.self, at: 0), scanID: scanID, scanner: try row.decode(String.self, at: 1),
                    ruleID: try row.decode(String.self, at: 2),
                    severity: Severity(rawValue: try row.decode(String.self, at: 3)) ?? .info,
                    title: try row.decode(String.self, at: 4), message: try row.decode(String.self, at: 5),
                    path: try row.decode(String.self, at: 6), line: try row.decode(Int32?.self, at: 7).map(Int.init),
                    column: try row.decode(Int32?.self, at: 8).map(Int.init), cwe: try row.decode([String].self, at: 9),
                    fingerprint: try row.decode(String.self, at: 10))
            }
            var next: String?
            if findings.count > pageSize {
                findings.removeLast()
                next = findings.last.map { Data($0.id.uuidString.utf8).base64EncodedString() }
            }
            return (findings, next)
        }
    }

    /// `LIKE` metacharacters taken literally.
    static func likeEscaped(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%")
            .replacingOccurrences(of: "_", with: "\\_")
    }
}

extension ScanService {
    /// Replaces a scan's labels (status and everything else belong to the fleet). Validated like
    /// create; a scan of another organization is not found.
    public func updateScanLabels(organizationID: UUID, id: UUID, labels: [String: String]) async throws -> Scan {
        try CreateScanRequest.validate(labels: labels)
        let json = try PostgresJSONB(encoding: labels)
        return try await client.withTransaction(organizationID: organizationID) { c in
            let changed = try await c.execute(
                "UPDATE scans SET labels = \(json), version = version + 1, updated_at = now() WHERE id = \(id)")
            guard changed == 1, let scan = try await Self.fetch(c, id: id) else {
                throw ScanServiceError(code: .notFound, message: "no scan \(id)")
            }
            return scan
        }
    }
}
