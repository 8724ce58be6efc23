import ArgumentParser
import CloudScanPostgres
import Foundation
import Logging

/// `cloudscan-bench`: the pieces `scripts/bench-copy` times. Connection settings come from the
/// PG* environment variables; the schema from `--schema`.
@main
struct CloudScanBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloudscan-bench", abstract: "Benchmark helpers.",
        subcommands: [
            Seed.self, Generate.self, Copy.self, AMQPBench.self, DispatchBench.self, FindingsBench.self,
            SweeperBench.self,
        ])

    struct Common: ParsableArguments {
        @Option(help: "Schema holding a migrated cloudscan database.") var schema: String
        @Option(help: "Findings per scan.") var perScan: Int = 10_000

        func client() -> PostgresClient {
            var logger = Logger(label: "bench")
            logger.logLevel = .warning
            let configuration = PostgresConfiguration(
                applicationName: "cloudscan-bench", searchPath: schema, maximumConnections: 1)
            return PostgresClient(configuration: configuration, logger: logger)
        }

        /// The scans the findings belong to, in a fixed order.
        func scans(_ client: PostgresClient) async throws -> [(UUID, UUID, Date)] {
            try await client.query("SELECT organization_id, id, created_at FROM scans ORDER BY id").map {
                (try $0.decode(UUID.self, at: 0), try $0.decode(UUID.self, at: 1), try $0.decode(Date.self, at: 2))
            }
        }
    }

    /// One deterministic finding row (the same for the file and the module).
    static func row(_ n: Int, scans: [(UUID, UUID, Date)], perScan: Int) -> [(any PostgresEncodable)?] {
        let (org, scan, created) = scans[(n / perScan) % scans.count]
        let severities = ["critical", "high", "medium", "low", "info"]
        return [
            org, scan, created, "semgrep", "python.lang.security.audit.rule-\(n % 97)", severities[n % 5],
            "Finding \(n)", "Potential issue found at line \(n % 4000)", "src/module_\(n % 211)/file_\(n % 13).py",
            Int32(n % 4000), Int32(n % 80), ["CWE-\(n % 900)"], "fp-\(n)",
            PostgresJSONB(text: "{\"ruleId\": \"rule-\(n % 97)\", \"level\": \"warning\", \"n\": \(n)}"),
        ]
    }

    static let columns =
        "organization_id, scan_id, scan_created_at, scanner, rule_id, severity, title, message, path, line, \"column\", cwe, fingerprint, raw"

    struct Seed: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create one organization, project and the scans.")
        @OptionGroup var common: Common
        @Option var rows: Int

        func run() async throws {
            let client = common.client()
            let org = UUID()
            let project = UUID()
            let scans = max(1, (rows + common.perScan - 1) / common.perScan)
            try await client.withTransaction(organizationID: org) { c in
                try await c.execute("INSERT INTO organizations (id, slug, name) VALUES (\(org), 'bench', 'bench')")
                try await c.execute(
                    "INSERT INTO projects (id, organization_id, name, external_key) VALUES (\(project), \(org), 'b', 'b')"
                )
                try await c.execute(
                    """
                    INSERT INTO scans (id, created_at, organization_id, project_id, scan_types, artifact_ref)
                    SELECT gen_random_uuid(), now(), \(org), \(project), '{sast}', 'file:///bench'
                    FROM generate_series(1, \(scans))
                    """)
            }
            await client.shutdown()
        }
    }

    struct Generate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write the rows as a COPY text file.")
        @OptionGroup var common: Common
        @Option var rows: Int
        @Option var out: String

        func run() async throws {
            let client = common.client()
            let scans = try await common.scans(client)
            await client.shutdown()
            FileManager.default.createFile(atPath: out, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
            var writer = PostgresCopyWriter.forFile { bytes in
                try handle.write(contentsOf: bytes)
            }
            for n in 0..<rows {
                try writer.writeRow(CloudScanBench.row(n, scans: scans, perScan: common.perScan))
            }
            try writer.flush()
            try handle.close()
        }
    }

    struct Copy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "COPY the rows through the module; prints seconds and rows/s.")
        @OptionGroup var common: Common
        @Option var rows: Int
        @Option(help: "Send this COPY text file instead of encoding rows from Swift values.") var fromFile: String?

        func run() async throws {
            let client = common.client()
            let scans = try await common.scans(client)
            let perScan = common.perScan
            let rows = self.rows
            let file = fromFile
            let started = ContinuousClock.now
            let copied = try await client.withConnection { connection in
                try await connection.copyFrom("COPY findings (\(CloudScanBench.columns)) FROM STDIN") { writer in
                    if let file {
                        let input = try FileHandle(forReadingFrom: URL(fileURLWithPath: file))
                        while let data = try input.read(upToCount: 1 << 20), !data.isEmpty {
                            try writer.writeRaw(bytes: data)
                        }
                    } else {
                        for n in 0..<rows {
                            try writer.writeRow(CloudScanBench.row(n, scans: scans, perScan: perScan))
                        }
                    }
                }
            }
            let elapsed = ContinuousClock.now - started
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            await client.shutdown()
            print(String(format: "%d %.3f %.0f", copied, seconds, Double(copied) / seconds))
        }
    }
}
