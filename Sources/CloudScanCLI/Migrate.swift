import ArgumentParser
import CloudScanPostgres
import CloudScanStore
import Foundation

/// `cloudscan migrate up|down|status`.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply, revert or list the schema migrations (under an advisory lock).",
        subcommands: [Up.self, Down.self, Status.self],
        defaultSubcommand: Status.self
    )

    struct Common: ParsableArguments {
        @OptionGroup var database: DatabaseOptions
        @Option(help: "The Migrations directory (env MIGRATIONS_DIR).")
        var migrations: String?

        func withMigrator<R>(_ body: (Migrator, PostgresClient) async throws -> R) async throws -> R {
            let logger = try database.makeLogger(label: "cloudscan.migrate")
            var configuration = database.postgresConfiguration(applicationName: "cloudscan-migrate")
            configuration.maximumConnections = 1
            let client = PostgresClient(configuration: configuration, logger: logger)
            let migrator = Migrator(
                client: client, migrations: try Migration.load(directory: try locateMigrations(migrations)),
                logger: logger)
            do {
                let result = try await body(migrator, client)
                await client.shutdown()
                return result
            } catch {
                await client.shutdown()
                throw error
            }
        }
    }

    struct Up: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Apply pending migrations.")
        @OptionGroup var common: Common
        @Option(help: "Stop after this version.") var to: Int?

        func run() async throws {
            try await common.withMigrator { migrator, client in
                let applied = try await migrator.up(to: to)
                try await PartitionMaintenance(client: client).ensureAhead()
                print(applied.isEmpty ? "up to date" : "applied \(applied.map(String.init).joined(separator: ", "))")
            }
        }
    }

    struct Down: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revert the last applied migrations.")
        @OptionGroup var common: Common
        @Option(help: "How many to revert.") var steps: Int = 1

        func run() async throws {
            try await common.withMigrator { migrator, _ in
                let reverted = try await migrator.down(steps: steps)
                print(
                    reverted.isEmpty
                        ? "nothing to revert" : "reverted \(reverted.map(String.init).joined(separator: ", "))")
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List migrations and whether each is applied.")
        @OptionGroup var common: Common

        func run() async throws {
            try await common.withMigrator { migrator, _ in
                print("VERSION  NAME                           APPLIED AT                 CHECKSUM")
                for row in try await migrator.status() {
                    let applied = row.appliedAt.map { "\($0)" } ?? "pending"
                    let name = row.name.padding(toLength: 30, withPad: " ", startingAt: 0)
                    let version = String(format: "%04d", row.version)
                    print(
                        "\(version)     \(name) \(applied.padding(toLength: 26, withPad: " ", startingAt: 0)) \(row.checksumMatches ? "ok" : "CHANGED")"
                    )
                }
            }
        }
    }
}
