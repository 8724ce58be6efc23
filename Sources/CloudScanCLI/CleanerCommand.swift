import ArgumentParser
import CloudScanAPI
import CloudScanDispatcher
import CloudScanMetrics
import CloudScanPostgres
import CloudScanWorkers
import Foundation
import Logging
import ServiceLifecycle

/// `cloudscan cleaner`: retention, daily at a set time (UTC) or once.
struct CleanerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cleaner",
        abstract:
            "Apply each organization's retention: drop expired months, delete the rest in batches, artifacts too.",
        discussion: """
            Daily at --at (env CLEANER_AT, HH:MM UTC, default 00:00); --once runs now and exits; --dry-run prints \
            what a run would delete and changes nothing. One instance works at a time (advisory lock). Artifacts \
            (s3://) are deleted through the storage service (STORAGE_URL, STORAGE_TOKEN). Environment: \
            CLEANER_BATCH_SCANS (500), CLEANER_BATCH_FINDINGS (50000), OUTBOX_KEEP_DAYS (7), METRICS_PORT (9103).
            """)

    @OptionGroup var database: DatabaseOptions
    @Flag(help: "Run once now and exit.") var once = false
    @Flag(name: .customLong("dry-run"), help: "Print what a run would delete; change nothing (implies --once).")
    var dryRun = false
    @Option(help: "Daily run time, HH:MM UTC (env CLEANER_AT; default 00:00).") var at: String?

    func run() async throws {
        let environment = FleetSettings.values
        let logger = try database.makeLogger(label: "cloudscan.cleaner")
        let client = PostgresClient(
            configuration: try database.postgresConfiguration(applicationName: "cloudscan-cleaner"), logger: logger)
        let storage = ArtifactResolver(storageURL: environment["STORAGE_URL"], token: environment["STORAGE_TOKEN"])
        let cleaner = RetentionCleaner(
            client: client, deleteArtifact: { await storage.delete($0, organizationID: $1) },
            configuration: .init(
                batchScans: try FleetSettings.integer("CLEANER_BATCH_SCANS", 500, from: environment),
                batchFindings: try FleetSettings.integer("CLEANER_BATCH_FINDINGS", 50_000, from: environment),
                outboxKeepDays: try FleetSettings.integer("OUTBOX_KEEP_DAYS", 7, from: environment)),
            logger: logger)
        if once || dryRun {
            let report = try await cleaner.run(dryRun: dryRun)
            if !report.ran { print("another cleaner is running; nothing done") }
            for line in report.lines { print(line) }
            if report.lines.isEmpty || (dryRun && report.months.isEmpty && report.deleted.isEmpty) {
                print(dryRun ? "nothing has expired" : "")
            }
            await client.shutdown()
            return
        }
        let time = at ?? environment["CLEANER_AT"] ?? "00:00"
        guard let (hour, minute) = Self.parse(time) else { throw ValidationError("--at: HH:MM (UTC), not \(time)") }
        let metrics = ProcessMetrics.shared
        let port = try FleetSettings.integer("METRICS_PORT", 9103, in: 0...65535, from: environment)
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    DailyCleaner(cleaner: cleaner, hour: hour, minute: minute, logger: logger),
                    MetricsEndpoint.service(
                        metrics: metrics, host: environment["METRICS_HOST"] ?? "127.0.0.1", port: port, logger: logger),
                ], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        logger.notice("cleaner running", metadata: ["daily_at_utc": "\(time)"])
        try await group.run()
        await client.shutdown()
    }

    static func parse(_ text: String) -> (Int, Int)? {
        let parts = text.split(separator: ":").compactMap { Int($0) }
        guard parts.count == 2, (0..<24).contains(parts[0]), (0..<60).contains(parts[1]) else { return nil }
        return (parts[0], parts[1])
    }
}

/// Runs the cleaner every day at hour:minute UTC.
struct DailyCleaner: Service {
    let cleaner: RetentionCleaner
    let hour: Int
    let minute: Int
    let logger: Logger

    /// The next hour:minute UTC after `now`.
    static func next(after now: Date, hour: Int, minute: Int) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let today = calendar.date(bySettingHour: hour, minute: minute, second: 0, of: now)!
        return today > now ? today : calendar.date(byAdding: .day, value: 1, to: today)!
    }

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                let next = Self.next(after: Date(), hour: hour, minute: minute)
                do {
                    try await Task.sleep(for: .seconds(next.timeIntervalSinceNow))
                } catch {
                    return  // shutting down
                }
                do {
                    _ = try await cleaner.run()
                } catch is CancellationError {
                    return
                } catch {
                    logger.error("cleaner run failed; the next run tries again", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}
