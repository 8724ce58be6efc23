import CloudScanPostgres
import CloudScanStore
import CloudScanTestSupport
import Foundation
import Testing

@Suite("Migrator (live server)")
struct MigratorTests {
    private func tables(_ client: PostgresClient) async throws -> Set<String> {
        let rows = try await client.query(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p') AND NOT relispartition"
        )
        return Set(try rows.map { try $0.decode(String.self, at: 0) })
    }

    @Test("up → down → up on an empty schema")
    func upDownUp() async throws {
        try await TestDatabase.withSchema("mig") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                let migrator = Migrator(
                    client: client, migrations: try TestDatabase.migrations(), logger: TestDatabase.logger("t"))
                let all = try TestDatabase.migrations().map(\.version)
                #expect(try await migrator.up() == all)
                let afterUp = try await tables(client)
                #expect(
                    afterUp.isSuperset(of: ["organizations", "projects", "scans", "findings", "scan_events", "outbox"]))
                #expect(try await migrator.up() == [], "a second up applies nothing")

                #expect(try await migrator.down(steps: all.count) == all.reversed())
                #expect(try await tables(client) == ["schema_migrations"])
                let pending = try await migrator.status()
                #expect(pending.allSatisfy { $0.appliedAt == nil })

                #expect(try await migrator.up() == all)
                #expect(try await tables(client) == afterUp)
                let status = try await migrator.status()
                #expect(status.allSatisfy { $0.appliedAt != nil && $0.checksumMatches })
            }
        }
    }

    @Test("a migration changed after it was applied is refused")
    func changedMigrationRefused() async throws {
        try await TestDatabase.withSchema("migsum") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                let original = [
                    Migration(version: 1, name: "one", up: "CREATE TABLE one (id int)", down: "DROP TABLE one")
                ]
                try await Migrator(client: client, migrations: original, logger: TestDatabase.logger("t")).up()

                var edited = original
                edited[0].up = "CREATE TABLE one (id int, extra text)"
                edited.append(Migration(version: 2, name: "two", up: "CREATE TABLE two (id int)", down: nil))
                let migrator = Migrator(client: client, migrations: edited, logger: TestDatabase.logger("t"))
                await #expect(throws: MigrationError.checksumMismatch(version: 1, name: "one")) {
                    try await migrator.up()
                }
                let status = try await migrator.status()
                #expect(status.first { $0.version == 1 }?.checksumMatches == false)
                let two = try await client.query("SELECT to_regclass('two') IS NULL").single().decode(Bool.self, at: 0)
                #expect(two, "nothing after the refusal was applied")

                // A version the build does not know is refused too.
                let older = Migrator(client: client, migrations: [], logger: TestDatabase.logger("t"))
                await #expect(throws: MigrationError.unknownAppliedVersion(1)) { try await older.up() }
            }
        }
    }

    @Test("a failing migration leaves no trace and is not recorded")
    func failingMigrationRollsBack() async throws {
        try await TestDatabase.withSchema("migfail") { db in
            try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                let migrations = [
                    Migration(version: 1, name: "ok", up: "CREATE TABLE a (id int)", down: nil),
                    Migration(version: 2, name: "broken", up: "CREATE TABLE b (id int); SELECT 1/0;", down: nil),
                ]
                let migrator = Migrator(client: client, migrations: migrations, logger: TestDatabase.logger("t"))
                let error = await #expect(throws: PostgresError.self) { try await migrator.up() }
                #expect(error?.sqlState == "22012")
                let state = try await client.query(
                    "SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NULL, (SELECT array_agg(version)::text FROM schema_migrations)"
                ).single()
                #expect(try state.decode(Bool.self, at: 0))
                #expect(try state.decode(Bool.self, at: 1))
                #expect(try state.decode(String.self, at: 2) == "{1}")
            }
        }
    }

    @Test("two migrators racing on one schema apply each migration once")
    func concurrentMigratorsSerialize() async throws {
        try await TestDatabase.withSchema("migrace") { db in
            let results = try await withThrowingTaskGroup(of: [Int].self) { group in
                for _ in 0..<3 {
                    group.addTask {
                        try await TestDatabase.withClient(db.ownerConfiguration(maximumConnections: 1)) { client in
                            try await Migrator(
                                client: client, migrations: try TestDatabase.migrations(),
                                logger: TestDatabase.logger("t")
                            ).up()
                        }
                    }
                }
                var all: [[Int]] = []
                for try await result in group { all.append(result) }
                return all
            }
            let versions = try TestDatabase.migrations().map(\.version)
            #expect(results.filter { $0 == versions }.count == 1)
            #expect(results.filter { $0.isEmpty }.count == 2)
        }
    }

    @Test("migration files are read in version order; malformed names are refused")
    func loadingFiles() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mig-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "B".write(to: directory.appendingPathComponent("0010_second.up.sql"), atomically: true, encoding: .utf8)
        try "A".write(to: directory.appendingPathComponent("0002_first.up.sql"), atomically: true, encoding: .utf8)
        try "a".write(to: directory.appendingPathComponent("0002_first.down.sql"), atomically: true, encoding: .utf8)
        let loaded = try Migration.load(directory: directory)
        #expect(loaded.map(\.version) == [2, 10])
        #expect(loaded.map(\.name) == ["first", "second"])
        #expect(loaded[0].down == "a")
        #expect(loaded[1].down == nil)

        try "x".write(to: directory.appendingPathComponent("notes.sql"), atomically: true, encoding: .utf8)
        #expect(throws: MigrationError.malformedFileName("notes.sql")) { try Migration.load(directory: directory) }
    }
}
