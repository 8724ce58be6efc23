import CloudScanPostgres
import Foundation
import Logging

/// Applies and reverts ``Migration``s under a PostgreSQL advisory lock, recording each applied
/// version with the SHA-256 of its `.up.sql` in `schema_migrations` (in the session's schema).
public struct Migrator: Sendable {
    /// One row of ``status()``.
    public struct Status: Sendable, Hashable {
        public var version: Int
        public var name: String
        /// When it was applied, nil if pending.
        public var appliedAt: Date?
        /// Whether the applied checksum still matches the file (true for pending ones).
        public var checksumMatches: Bool
    }

    let client: PostgresClient
    let migrations: [Migration]
    let logger: Logger

    /// A migrator over `migrations` (sorted by version).
    public init(client: PostgresClient, migrations: [Migration], logger: Logger) {
        self.client = client
        self.migrations = migrations.sorted { $0.version < $1.version }
        self.logger = logger
    }

    /// Applies pending migrations (up to `target` if given); returns the versions applied.
    @discardableResult
    public func up(to target: Int? = nil) async throws -> [Int] {
        try await locked { connection in
            let applied = try await verifiedApplied(connection)
            var done: [Int] = []
            for migration in migrations where applied[migration.version] == nil {
                if let target, migration.version > target { break }
                let checksum = try await Self.checksum(migration.up, connection)
                try await connection.withTransaction { connection in
                    try await connection.executeScript(migration.up)
                    try await connection.execute(
                        """
                        INSERT INTO schema_migrations (version, name, checksum)
                        VALUES (\(migration.version), \(migration.name), \(checksum))
                        """)
                }
                logger.info(
                    "applied migration", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
                done.append(migration.version)
            }
            return done
        }
    }

    /// Reverts the last `steps` applied migrations; returns the versions reverted.
    @discardableResult
    public func down(steps: Int = 1) async throws -> [Int] {
        try await locked { connection in
            let applied = try await verifiedApplied(connection)
            var done: [Int] = []
            for version in applied.keys.sorted(by: >).prefix(steps) {
                let migration = migrations.first { $0.version == version }!
                guard let down = migration.down else {
                    throw MigrationError.irreversible(version: version, name: migration.name)
                }
                try await connection.withTransaction { connection in
                    try await connection.executeScript(down)
                    try await connection.execute("DELETE FROM schema_migrations WHERE version = \(version)")
                }
                logger.info("reverted migration", metadata: ["version": "\(version)", "name": "\(migration.name)"])
                done.append(version)
            }
            return done
        }
    }

    /// Every known migration with whether (and when) it is applied.
    public func status() async throws -> [Status] {
        try await locked { connection in
            let applied = try await appliedRows(connection)
            var out: [Status] = []
            for migration in migrations {
                let checksum = try await Self.checksum(migration.up, connection)
                let row = applied[migration.version]
                out.append(
                    Status(
                        version: migration.version, name: migration.name, appliedAt: row?.appliedAt,
                        checksumMatches: row.map { $0.checksum == checksum } ?? true))
            }
            return out
        }
    }

    // MARK: Internals

    private struct AppliedRow { var checksum: String; var appliedAt: Date }

    /// Runs `body` on one session holding the schema's migration lock.
    private func locked<R: Sendable>(_ body: (PostgresConnection) async throws -> R) async throws -> R {
        try await client.withConnection { connection in
            try await connection.query("SELECT pg_advisory_lock(hashtext('cloudscan.migrate.' || current_schema()))")
            do {
                try await connection.executeScript(
                    """
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        checksum text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )
                    """)
                let result = try await body(connection)
                try await connection.query(
                    "SELECT pg_advisory_unlock(hashtext('cloudscan.migrate.' || current_schema()))")
                return result
            } catch {
                _ = try? await connection.query(
                    "SELECT pg_advisory_unlock(hashtext('cloudscan.migrate.' || current_schema()))")
                throw error
            }
        }
    }

    private func appliedRows(_ connection: PostgresConnection) async throws -> [Int: AppliedRow] {
        let rows = try await connection.query("SELECT version, checksum, applied_at FROM schema_migrations")
        var out: [Int: AppliedRow] = [:]
        for row in rows {
            out[try row.decode(Int.self, at: 0)] = AppliedRow(
                checksum: try row.decode(String.self, at: 1), appliedAt: try row.decode(Date.self, at: 2))
        }
        return out
    }

    /// Applied rows, after checking each is known and unchanged.
    private func verifiedApplied(_ connection: PostgresConnection) async throws -> [Int: AppliedRow] {
        let applied = try await appliedRows(connection)
        for (version, row) in applied {
            guard let migration = migrations.first(where: { $0.version == version }) else {
                throw MigrationError.unknownAppliedVersion(version)
            }
            guard try await Self.checksum(migration.up, connection) == row.checksum else {
                throw MigrationError.checksumMismatch(version: version, name: migration.name)
            }
        }
        return applied
    }

    static func checksum(_ sql: String, _ connection: PostgresConnection) async throws -> String {
        try await connection.query("SELECT encode(sha256(convert_to(\(sql), 'UTF8')), 'hex')").single()
            .decode(String.self, at: 0)
    }
}
