import ArgumentParser
import CloudScanAMQP
import CloudScanAPI
import CloudScanCore
import CloudScanMetrics
import CloudScanPostgres
import CloudScanWorkers
import Foundation
import Logging
import ServiceLifecycle

/// The notifier's consumer, built the same way by `cloudscan notifier` and `cloudscan dev`.
struct NotifierParts {
    let client: PostgresClient
    let publisher: AMQPPublisher
    let service: any Service

    init(
        database: PostgresConfiguration, broker: AMQPConfiguration, topology: AMQPTopology,
        environment: [String: String] = FleetSettings.values, development: Bool = false, logger: Logger
    ) throws {
        let queue = "cloudscan.notify"
        let concurrency = try FleetSettings.integer("NOTIFY_CONCURRENCY", 16, from: environment)
        var database = database
        database.maximumConnections = max(database.maximumConnections, concurrency + 2)
        client = PostgresClient(configuration: database, logger: logger)
        publisher = AMQPPublisher(
            configuration: .init(broker: broker, connectionName: "cloudscan-notifier", metrics: ProcessMetrics.shared),
            logger: logger)
        let delays = topology.workQueues.first { $0.name == queue }?.retryDelaysSeconds ?? [10, 60, 600, 3600]
        let notifier = Notifier(
            client: client, publisher: publisher,
            configuration: .init(
                queue: queue, retryDelaysSeconds: delays,
                timeout: .seconds(
                    try FleetSettings.integer("WEBHOOK_TIMEOUT_SECONDS", 10, in: 1...300, from: environment)),
                screen: try FleetSettings.webhookScreen(environment, development: development),
                secrets: try FleetSettings.webhookSecrets(environment, development: development, logger: logger)),
            logger: logger)
        service = try AMQPConsumerService.workQueue(
            queue, broker: broker, publisher: publisher, topology: topology, concurrency: concurrency,
            connectionName: "cloudscan-notifier", logger: logger, handler: notifier.handle)
    }

    func close() async {
        await publisher.close()
        await client.shutdown()
    }
}

/// `cloudscan notifier`: scan.completed / scan.failed → the organizations' webhooks.
struct NotifierCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notifier",
        abstract: "Deliver scan.completed and scan.failed to webhook subscriptions (signed, retried, logged).",
        discussion: """
            Environment: NOTIFY_CONCURRENCY (16 deliveries at once), WEBHOOK_TIMEOUT_SECONDS (10), METRICS_PORT \
            (9104). Retries follow cloudscan.notify's delay tiers in the topology file (TOPOLOGY_FILE).
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var broker: BrokerOptions
    @Option(help: "The topology file, for the delay tiers (env TOPOLOGY_FILE).") var topology: String?

    func run() async throws {
        let environment = FleetSettings.values
        let logger = try database.makeLogger(label: "cloudscan.notifier")
        let topologyFile = try locateRepositoryFile(
            "topology/topology.json", flag: topology ?? environment["TOPOLOGY_FILE"])
        let parts = try NotifierParts(
            database: try database.postgresConfiguration(applicationName: "cloudscan-notifier"),
            broker: try broker.configuration(), topology: try AMQPTopology.load(from: topologyFile), logger: logger)
        let metrics = ProcessMetrics.shared
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    parts.service,
                    MetricsEndpoint.service(
                        metrics: metrics, host: environment["METRICS_HOST"] ?? "127.0.0.1",
                        port: try FleetSettings.integer("METRICS_PORT", 9104, in: 0...65535, from: environment),
                        logger: logger),
                ], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        logger.notice("notifier running")
        try await group.run()
        await parts.close()
    }
}
