import ArgumentParser
import CloudScanAMQP
import CloudScanPostgres
import CloudScanWorkers
import Foundation
import Logging
import ServiceLifecycle

/// Options shared by the roles that publish.
struct BrokerOptions: ParsableArguments {
    @Option(name: .customLong("amqp-url"), help: "amqp[s]:// URL of the broker (env AMQP_URL).")
    var amqpURL: String?

    func configuration() throws -> AMQPConfiguration {
        let url = amqpURL ?? FleetSettings.values["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"
        do {
            return try AMQPConfiguration(url: url)
        } catch {
            throw ValidationError("AMQP_URL / --amqp-url: \(error)")
        }
    }
}

/// The pieces of the relay role, built the same way by `cloudscan relay` and `cloudscan dev`.
struct RelayParts {
    let client: PostgresClient
    let publisher: AMQPPublisher
    let relay: OutboxRelay

    init(database: PostgresConfiguration, broker: AMQPConfiguration, logger: Logger) {
        client = PostgresClient(configuration: database, logger: logger)
        publisher = AMQPPublisher(
            configuration: .init(broker: broker, connectionName: "cloudscan-relay", metrics: ProcessMetrics.shared),
            logger: logger)
        relay = OutboxRelay(
            client: client, listener: PostgresListener(configuration: database, logger: logger), publisher: publisher,
            configuration: .init(metrics: ProcessMetrics.shared), logger: logger)
    }

    func close() async {
        await publisher.close()
        await client.shutdown()
    }
}

/// `cloudscan relay`: publishes the outbox to the broker.
struct Relay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publish outbox rows to the broker with confirms (SIGTERM drains and exits).")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var broker: BrokerOptions

    func run() async throws {
        let logger = try database.makeLogger(label: "cloudscan.relay")
        let parts = RelayParts(
            database: database.postgresConfiguration(applicationName: "cloudscan-relay"),
            broker: try broker.configuration(), logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [parts.relay, try metricsEndpoint(defaultPort: 9105, logger: logger)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        logger.notice("relay running")
        try await group.run()
        await parts.close()
    }
}
