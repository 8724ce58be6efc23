import ArgumentParser
import CloudScanAMQP
import CloudScanDispatcher
import CloudScanPostgres
import CloudScanStore
import CloudScanWorkers
import Foundation
import ServiceLifecycle

/// `cloudscan dev`: every role in one process, for one machine.
struct Dev: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the whole fleet in one process (local process job backend).")

    @OptionGroup var database: DatabaseOptions
    @Option(help: "The Migrations directory (env MIGRATIONS_DIR).") var migrations: String?
    @Option(name: .customLong("amqp-url"), help: "amqp:// URL of the broker (env AMQP_URL).") var amqpURL: String?
    @Option(help: "The topology file (env TOPOLOGY_FILE).") var topology: String?
    @Flag(help: "Check the servers and migrate, then exit.") var check = false
    @Option(help: "HTTP port (env HTTP_PORT; default 8080).") var port: Int?

    func run() async throws {
        let logger = try database.makeLogger(label: "cloudscan.dev", defaultFormat: .text)
        let configuration = database.postgresConfiguration(applicationName: "cloudscan-dev")
        let client = PostgresClient(configuration: configuration, logger: logger)
        defer { _ = client }
        let migrator = Migrator(
            client: client, migrations: try Migration.load(directory: try locateMigrations(migrations)), logger: logger)
        let applied = try await migrator.up()
        try await PartitionMaintenance(client: client).ensureAhead()
        logger.info("schema ready", metadata: ["applied": "\(applied)"])

        let broker = try AMQPConfiguration(
            url: amqpURL ?? FleetSettings.values["AMQP_URL"]
                ?? "amqp://cloudscan:cloudscan@127.0.0.1:5672/cloudscan")
        let server = try await AMQPProbe.serverProperties(broker)
        logger.info(
            "broker reachable",
            metadata: ["product": "\(server["product"] ?? "?")", "version": "\(server["version"] ?? "?")"])
        let topologyFile = try locateRepositoryFile(
            "topology/topology.json", flag: topology ?? FleetSettings.values["TOPOLOGY_FILE"])
        let loadedTopology = try AMQPTopology.load(from: topologyFile)
        let report = try await loadedTopology.apply(broker: broker)
        for problem in report.problems { logger.error("topology drift", metadata: ["problem": "\(problem.message)"]) }
        guard report.isClean else { throw ExitCode(3) }
        logger.info("topology declared", metadata: ["objects": "\(report.declared.count)"])
        await client.shutdown()
        if check { return }

        // The roles that exist so far, in one process; SIGTERM/SIGINT drain them.
        let api = try await APIParts(
            database: configuration, broker: broker, host: nil, port: port, grpcPort: nil,
            insecureDevelopmentAuth: true,
            relay: true, logger: logger)
        let dispatcher = try DispatcherParts(
            database: configuration, broker: broker, backend: .local, topology: loadedTopology, concurrency: 4,
            development: true, logger: logger)
        let writers = try WriterParts(
            roles: [.findings, .status], database: configuration, broker: broker, topology: loadedTopology,
            tokens: try runnerTokenMinter(FleetSettings.values, development: true, logger: logger),
            logger: logger)
        // The sweeper reconciles the local runners (they live in this process) with their scans.
        let sweeperClient = PostgresClient(configuration: configuration, logger: logger)
        let sweeperSettings = try SweeperSettings.configuration(FleetSettings.values)
        let sweeper = Sweeper(
            client: sweeperClient, inventory: dispatcher.localBackend!, configuration: sweeperSettings, logger: logger,
            onPass: SweeperSettings.onPass(ProcessMetrics.shared))
        let depths = QueueDepthSampler(
            topology: loadedTopology, broker: broker, metrics: ProcessMetrics.shared,
            interval: min(sweeperSettings.interval, .seconds(5)), logger: logger)
        let notifier = try NotifierParts(
            database: configuration, broker: broker, topology: loadedTopology, development: true, logger: logger)
        // Retention, daily at CLEANER_AT (UTC, default 00:00), on the sweeper's client.
        let environment = FleetSettings.values
        let storage = ArtifactResolver(storageURL: environment["STORAGE_URL"], token: environment["STORAGE_TOKEN"])
        guard let (hour, minute) = CleanerCommand.parse(environment["CLEANER_AT"] ?? "00:00") else {
            throw ValidationError("CLEANER_AT: HH:MM (UTC)")
        }
        let cleaner = DailyCleaner(
            cleaner: RetentionCleaner(
                client: sweeperClient, deleteArtifact: { await storage.delete($0, organizationID: $1) },
                logger: logger),
            hour: hour, minute: minute, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: api.services + dispatcher.services + writers.services + [
                    sweeper, depths, notifier.service, cleaner,
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        logger.notice(
            "cloudscan dev is up: HTTP API on 127.0.0.1:\(port ?? 8080), gRPC on 127.0.0.1:9999; relay, dispatcher (local runners), findings and status writers, sweeper, notifier, cleaner running"
        )
        try await group.run()
        await writers.close()
        await sweeperClient.shutdown()
        await notifier.close()
        await dispatcher.close()
        await api.close()
    }
}
