import ArgumentParser
import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanPostgres
import CloudScanWorkers
import Foundation
import Logging
import ServiceLifecycle

/// The runner-token secret the writers check tokens with (the dispatcher mints with the same).
func runnerTokenMinter(_ environment: [String: String], development: Bool, logger: Logger) throws
    -> RunnerTokenMinter
{
    if let configured = environment["RUNNER_TOKEN_SECRET"], !configured.isEmpty {
        return try RunnerTokenMinter(secret: configured)
    }
    guard development else { throw ValidationError("RUNNER_TOKEN_SECRET (at least 32 bytes) is required") }
    logger.warning("RUNNER_TOKEN_SECRET is not set: using the development secret")
    return try RunnerTokenMinter(secret: developmentRunnerTokenSecret)
}

let developmentRunnerTokenSecret = "cloudscan-development-runner-token-secret-not-for-production"

/// The findings writer and the status writer, built the same way by their commands and `cloudscan dev`.
struct WriterParts {
    let client: PostgresClient
    let publisher: AMQPPublisher
    let services: [any Service]

    enum Role { case findings, status }

    init(
        roles: Set<Role>, database: PostgresConfiguration, broker: AMQPConfiguration, topology: AMQPTopology,
        tokens: RunnerTokenMinter, environment: [String: String] = FleetSettings.values,
        logger: Logger
    ) throws {
        func integer(_ key: String, _ fallback: Int) throws -> Int {
            guard let text = environment[key] else { return fallback }
            guard let value = Int(text), value > 0 else { throw ValidationError("\(key) must be a positive integer") }
            return value
        }
        let statusConcurrency = try integer("STATUS_CONCURRENCY", 8)
        var database = database
        database.maximumConnections = max(
            database.maximumConnections, statusConcurrency + (try integer("FINDINGS_LANES", 2)) + 4)
        client = PostgresClient(configuration: database, logger: logger)
        let publisher = AMQPPublisher(
            configuration: .init(broker: broker, connectionName: "cloudscan-writers", metrics: ProcessMetrics.shared),
            logger: logger)
        self.publisher = publisher
        var services: [any Service] = []
        if roles.contains(.findings) {
            let queue = "cloudscan.findings.ingest"
            // Lanes: independent consumers (each its own channel, flush order and multiple acks),
            // so one lane's COPY overlaps another's COMMIT.
            for lane in 0..<(try integer("FINDINGS_LANES", 2)) {
                services.append(
                    FindingsWriter(
                        consumer: AMQPConsumer(
                            configuration: .init(
                                broker: broker, queue: queue, prefetch: try integer("FINDINGS_PREFETCH", 16),
                                connectionName: "cloudscan-findings-writer-\(lane)"),
                            logger: logger),
                        client: client,
                        deadLetter: .init(publisher: publisher, exchange: Exchanges.deadLetter, routingKey: queue),
                        tokens: tokens,
                        configuration: try Self.findingsConfiguration(
                            maximumRows: try integer("FINDINGS_BATCH_ROWS", 5000),
                            maximumDelayMS: try integer("FINDINGS_BATCH_DELAY_MS", 50), environment),
                        logger: logger))
            }
        }
        if roles.contains(.status) {
            let queue = "cloudscan.status.ingest"
            let writer = StatusWriter(client: client, tokens: tokens, logger: logger)
            services.append(
                try AMQPConsumerService.workQueue(
                    queue, broker: broker, publisher: publisher, topology: topology, concurrency: statusConcurrency,
                    connectionName: "cloudscan-status-writer", logger: logger, handler: writer.handle))
        }
        self.services = services
    }

    func close() async {
        await publisher.close()
        await client.shutdown()
    }

    private static func findingsConfiguration(maximumRows: Int, maximumDelayMS: Int, _ environment: [String: String])
        throws -> FindingsWriter.Configuration
    {
        var configuration = FindingsWriter.Configuration(
            maximumRows: maximumRows, maximumDelay: .milliseconds(maximumDelayMS))
        configuration.metrics = ProcessMetrics.shared
        configuration.drainTimeout = try drainTimeout(environment)
        configuration.queueMetrics = ProcessMetrics.shared.queue("cloudscan.findings.ingest")
        if let fault = environment["CLOUDSCAN_FAULT"], fault.hasPrefix("findings-writer:") {
            configuration.pauseAt = .init(rawValue: String(fault.dropFirst("findings-writer:".count)))
        }
        return configuration
    }
}

/// `cloudscan findings-writer`.
struct FindingsWriterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "findings-writer",
        abstract: "Write runners' findings batches into PostgreSQL, exactly once (SIGTERM drains and exits).",
        discussion: """
            Environment: RUNNER_TOKEN_SECRET (required), FINDINGS_LANES (consumers, default 2), \
            FINDINGS_PREFETCH (messages per lane, default 16), \
            FINDINGS_BATCH_ROWS (default 5000), FINDINGS_BATCH_DELAY_MS (default 50).
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var broker: BrokerOptions
    @Option(help: "The topology file (env TOPOLOGY_FILE).") var topology: String?

    func run() async throws {
        try await runWriters(
            [.findings], label: "cloudscan.findings-writer", database: database, broker: broker,
            topology: topology)
    }
}

/// `cloudscan status-writer`.
struct StatusWriterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status-writer",
        abstract: "Apply runners' status reports to scans (SIGTERM drains and exits).",
        discussion: "Environment: RUNNER_TOKEN_SECRET (required), STATUS_CONCURRENCY (default 8).")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var broker: BrokerOptions
    @Option(help: "The topology file (env TOPOLOGY_FILE).") var topology: String?

    func run() async throws {
        try await runWriters(
            [.status], label: "cloudscan.status-writer", database: database, broker: broker,
            topology: topology)
    }
}

private func runWriters(
    _ roles: Set<WriterParts.Role>, label: String, database: DatabaseOptions, broker: BrokerOptions, topology: String?
) async throws {
    let environment = FleetSettings.values
    let logger = try database.makeLogger(label: label)
    // Two malloc arenas, not 8 per core: many threads allocating parsed batches otherwise leave
    // the heap fragmented across arenas (the findings writer's RSS grew to 240 MB).
    limitMallocArenas(2)
    let topologyFile = try locateRepositoryFile(
        "topology/topology.json", flag: topology ?? environment["TOPOLOGY_FILE"])
    let parts = try WriterParts(
        roles: roles,
        database: database.postgresConfiguration(applicationName: label.replacingOccurrences(of: ".", with: "-")),
        broker: try broker.configuration(), topology: try AMQPTopology.load(from: topologyFile),
        tokens: try runnerTokenMinter(environment, development: false, logger: logger), logger: logger)
    let group = ServiceGroup(
        configuration: .init(
            services: parts.services
                + [try metricsEndpoint(defaultPort: roles.contains(.findings) ? 9106 : 9107, logger: logger)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    logger.notice("\(label) running")
    try await group.run()
    await parts.close()
}

/// glibc's `mallopt(M_ARENA_MAX, n)` (malloc.h is not in Swift's Glibc module: looked up).
func limitMallocArenas(_ arenas: Int32) {
    typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
    let mArenaMax: Int32 = -8
    _ = unsafeBitCast(symbol, to: Mallopt.self)(mArenaMax, arenas)
}
