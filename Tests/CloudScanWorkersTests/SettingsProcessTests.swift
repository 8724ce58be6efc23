import CloudScanTestSupport
import Foundation
import Testing

/// Settings as a role reads them: flags > environment > config.yaml > defaults; a bad value stops
/// the role with an error naming the key.
@Suite("settings (processes)")
struct SettingsProcessTests {
    static let binary = TestDatabase.repositoryRoot.appendingPathComponent(".build/debug/cloudscan").path

    /// Runs `cloudscan notifier` with `environment` (and no reachable servers); its output and status.
    static func notifier(_ environment: [String: String]) async throws -> (Int32, String) {
        let assignments = environment.map { "\($0.key)=\($0.value)" }
        return try await runCommandCapturingOutput(
            [
                // Standard error too; a role that passes its settings keeps trying to reach the
                // servers: 5 s is enough.
                "/bin/sh", "-c", #"exec "$@" 2>&1"#, "sh", "/usr/bin/timeout", "5", "/usr/bin/env", "-i",
                "PATH=/usr/bin:/bin", "DATABASE_URL=postgresql://nobody@127.0.0.1:1/none",
                "AMQP_URL=amqp://nobody:x@127.0.0.1:1/", "METRICS_PORT=0",
            ] + assignments
                + [
                    binary, "notifier", "--topology",
                    TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json").path,
                ])
    }

    @Test(
        "a bad value names its key, from the environment or config.yaml; the environment overrides the file; the seed's names work"
    )
    func precedenceAndErrors() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("settings-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("config.yaml").path
        try "NOTIFY_CONCURRENCY: lots\nWEBHOOK_TIMEOUT_SECONDS: 5\n".write(
            toFile: file, atomically: true, encoding: .utf8)

        let (status, output) = try await Self.notifier(["NOTIFY_CONCURRENCY": "-3"])
        #expect(status != 0 && output.contains("NOTIFY_CONCURRENCY: '-3' is not a whole number ≥ 1"), "\(output)")
        let (fileStatus, fileOutput) = try await Self.notifier(["CLOUDSCAN_CONFIG": file])
        #expect(fileStatus != 0 && fileOutput.contains("NOTIFY_CONCURRENCY: 'lots'"), "\(fileOutput)")
        // The environment wins over the file: past that key, the next problem is the broker.
        let (_, overridden) = try await Self.notifier(["CLOUDSCAN_CONFIG": file, "NOTIFY_CONCURRENCY": "4"])
        #expect(!overridden.contains("NOTIFY_CONCURRENCY"), "\(overridden)")
        // The seed's PROMETHEUS_PORT stands for METRICS_PORT (here a bad one, to see it read).
        let (_, seed) = try await Self.notifier(["PROMETHEUS_PORT": "70000", "METRICS_PORT": ""])
        #expect(seed.contains("METRICS_PORT (or PROMETHEUS_PORT): '70000'"), "\(seed)")
        let (missing, missingOutput) = try await Self.notifier([
            "CLOUDSCAN_CONFIG": directory.appendingPathComponent("nope.yaml").path
        ])
        #expect(missing != 0 && missingOutput.contains("CLOUDSCAN_CONFIG: cannot read"), "\(missingOutput)")
    }
}
