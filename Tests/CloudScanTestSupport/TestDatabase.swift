import CloudScanPostgres
import CloudScanStore
import Foundation
import Logging

/// A schema of its own on the live PostgreSQL that `scripts/services start` runs, so tests run in
/// parallel without seeing each other. Settings come from TEST_PG_* variables, with the scripts'
/// defaults.
public struct TestDatabase: Sendable {
    /// The schema's name (unique per test).
    public let schema: String
    /// The cluster's port: the shared one, or ``chaosPort``.
    public let port: Int

    /// A handle on an existing schema (e.g. `public`); ``withSchema(_:migrated:port:_:)`` makes fresh ones.
    public init(schema: String, port: Int = TestDatabase.port) {
        self.schema = schema
        self.port = port
    }

    public static let environment = ProcessInfo.processInfo.environment
    public static let host = environment["TEST_PG_HOST"] ?? "127.0.0.1"
    public static let port = Int(environment["TEST_PG_PORT"] ?? "") ?? 5432
    /// The cluster tests may restart (never the shared one).
    public static let chaosPort = Int(environment["TEST_PG_CHAOS_PORT"] ?? "") ?? 5433
    public static let database = environment["TEST_PG_DATABASE"] ?? "cloudscan"
    public static let ownerUser = environment["TEST_PG_OWNER"] ?? "cloudscan"
    public static let ownerPassword = environment["TEST_PG_OWNER_PASSWORD"] ?? "cloudscan"
    public static let appUser = environment["TEST_PG_APP_USER"] ?? "cloudscan_app"
    public static let appPassword = environment["TEST_PG_APP_PASSWORD"] ?? "cloudscan_app"
    /// `DATABASE_URL` for a process that connects as the services' role.
    public static var appURL: String { "postgresql://\(appUser):\(appPassword)@\(host):\(port)/\(database)" }

    /// The repository's root, found from this file's path.
    public static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    public static func logger(_ label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = .warning
        return logger
    }

    /// Settings for the schema-owning role (migrations, fixtures).
    public func ownerConfiguration(maximumConnections: Int = 4, port: Int? = nil) -> PostgresConfiguration {
        PostgresConfiguration(
            host: Self.host, port: port ?? self.port, database: Self.database, user: Self.ownerUser,
            password: Self.ownerPassword,
            applicationName: "cloudscan-test", connectTimeoutSeconds: 5, searchPath: schema,
            maximumConnections: maximumConnections)
    }

    /// Settings for the role the services use (row-level security applies to it).
    public func appConfiguration(maximumConnections: Int = 4) -> PostgresConfiguration {
        PostgresConfiguration(
            host: Self.host, port: port, database: Self.database, user: Self.appUser, password: Self.appPassword,
            applicationName: "cloudscan-test-app", connectTimeoutSeconds: 5, searchPath: schema,
            maximumConnections: maximumConnections)
    }

    /// The repository's migrations.
    public static func migrations() throws -> [Migration] {
        try Migration.load(directory: repositoryRoot.appendingPathComponent("Migrations"))
    }

    /// Creates a fresh schema (on the shared cluster unless `port` says otherwise), runs `body`
    /// with it, and drops it afterwards.
    public static func withSchema<R>(
        _ prefix: String = "t", migrated: Bool = false, port: Int = TestDatabase.port,
        _ body: (TestDatabase) async throws -> R
    ) async throws -> R {
        let name = "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
        let database = TestDatabase(schema: name, port: port)
        let admin = PostgresClient(
            configuration: database.ownerConfiguration(maximumConnections: 1), logger: logger("test"))
        try await admin.execute("CREATE SCHEMA \(identifier: name)")
        if migrated {
            let client = PostgresClient(
                configuration: database.ownerConfiguration(maximumConnections: 1), logger: logger("test"))
            try await Migrator(client: client, migrations: try migrations(), logger: logger("test")).up()
            await client.shutdown()
        }
        do {
            let result = try await body(database)
            _ = try? await admin.execute("DROP SCHEMA \(identifier: name) CASCADE")
            await admin.shutdown()
            return result
        } catch {
            _ = try? await admin.execute("DROP SCHEMA \(identifier: name) CASCADE")
            await admin.shutdown()
            throw error
        }
    }

    /// Runs `body` with a client and shuts it down afterwards.
    public static func withClient<R>(
        _ configuration: PostgresConfiguration, _ body: (PostgresClient) async throws -> R
    ) async throws -> R {
        let client = PostgresClient(configuration: configuration, logger: logger("test"))
        do {
            let result = try await body(client)
            await client.shutdown()
            return result
        } catch {
            await client.shutdown()
            throw error
        }
    }
}

extension TestDatabase {
    /// Creates an organization with one project, acting as that organization (as the services'
    /// role would after an admin created it). Returns their ids.
    public static func seedOrganization(
        _ client: PostgresClient, queuedScanCap: Int = 1000,
        enabledScanTypes: [String] = ["sast", "secrets", "iac", "sca"],
        projectKey: String = "proj-123"
    ) async throws -> (organization: UUID, project: UUID) {
        let organization = UUID()
        let project = UUID()
        try await client.withTransaction(organizationID: organization) { c in
            try await c.execute(
                """
                INSERT INTO organizations (id, slug, name, queued_scan_cap, enabled_scan_types)
                VALUES (\(organization), \("org-\(organization.uuidString.prefix(8).lowercased())"), 'Test org',
                        \(Int32(queuedScanCap)), \(enabledScanTypes))
                """)
            try await c.execute(
                """
                INSERT INTO projects (id, organization_id, name, external_key)
                VALUES (\(project), \(organization), 'Test project', \(projectKey))
                """)
        }
        return (organization, project)
    }
}
